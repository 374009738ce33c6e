"""Count the tensor operations (ATen calls, each a kernel launch or more on a GPU) that a context prefill with KV
compression dispatches, ragcore against kvpress, on the same model and ids. On a GPU a small model's prefill is
bound by launches, so this explains time ratios that a CPU run cannot show.

Runs in the kvpress environment from the repository root, like ``bench.kv_side_by_side``; writes the section
``kv-op-count``::

    HF_HUB_OFFLINE=1 .venv-kvpress/bin/python -m bench.kv_op_count \\
        --model ~/.cache/ragcore/hf/smollm2-135m-<digest> --tokens 300
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.peers.kvpress.match import METHODS, import_peer, ours_kwargs
from bench.results import write_section
from compress.kv import get_compressor
from ragcore import cache as kvcache
from ragcore.cache import new_cache
from ragcore.models import load_generator

logger = logging.getLogger("bench.kv_op_count")


class OpCount(TorchDispatchMode):
    """Counts the ATen operations dispatched inside the block (a proxy for a GPU's kernel launches)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.n += 1
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def count(model: torch.nn.Module, ids: torch.Tensor, ctx: contextlib.AbstractContextManager) -> int:
    c = OpCount()
    with ctx, c:
        kvcache.call(model.model, new_cache(model.config), input_ids=ids, use_cache=True)
    return c.n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--write-results", default=None, metavar="SECTION", help="also write docs/RESULTS.md section")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    peer, _ = import_peer()
    model, _ = load_generator(a.model, "cpu")
    ids = torch.randint(5, 1000, (1, a.tokens), generator=torch.Generator().manual_seed(0))
    layers = model.config.num_hidden_layers
    base = count(model, ids, contextlib.nullcontext())
    lines = ["| method | ops ragcore | ops kvpress | extra per layer |", "|---|---|---|---|"]
    lines.append(f"| none | {base} | {base} | 0 |")
    for m in METHODS:
        press = peer.make_press(m, a.ratio)
        ours = get_compressor(m, **ours_kwargs(m, press, a.ratio, a.tokens, True))
        n_ours = count(model, ids, ours.apply(model))
        n_theirs = count(model, ids, press(model))
        lines.append(f"| {m} | {n_ours} | {n_theirs} | {(n_ours - n_theirs) / layers:+.1f} |")
    table = "\n".join(lines)
    logger.info("%s", table)
    if a.write_results:
        body = (
            f"Tensor operations dispatched by one context prefill of {a.tokens} random token ids with compression "
            f"at ratio {a.ratio} ({Path(a.model).name}, {layers} layers, CPU), ragcore against kvpress "
            "0.5.5 with kvpress's hyperparameters and kept-token count. On a GPU each is a kernel launch or "
            "more, which is what a small model's prefill is bound by. On CPU tensors ragcore's cache adapter also "
            "checks the pruning indices' range (a min, a max and two reads back: 4 operations per layer, counted "
            "here), which it skips on GPUs, where each read back is a synchronisation.\n\n" + table
        )
        write_section(a.write_results, "KV compression: operations per prefill, ragcore vs kvpress", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
