"""Write the inputs of ``ragcore eval longctx`` (haystack, question, answer per item) as JSON for the
infini-retri peer.

Runs under ragcore's own venv. The items are those of ``eval.context_suites.longctx_items``, called with the same
arguments as ``ragcore eval longctx --model M --data D --tokens T --limit N --offset O`` (the same tokenizer
measures the haystacks), so the peer reads exactly what ragcore's methods read. The file also names the model's
converted Hugging Face folder (``ragcore.models.resolve``), which the peer loads.

Usage::

    HF_HUB_OFFLINE=1 python -m bench.peers.infini_retri.inputs --model smollm2-135m --tokens 8192 --limit 20 \\
        --out out/longctx/inputs-smollm2-8k.json
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eval.context_suites import longctx_items  # noqa: E402
from eval.report import write_json  # noqa: E402
from ragcore.generator import Generator  # noqa: E402
from ragcore.models import resolve  # noqa: E402

logger = logging.getLogger("bench.peers.infini_retri.inputs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="ragcore generator name (its tokenizer sizes the inputs)")
    ap.add_argument("--data", default=None, help="key-value retrieval JSONL(.gz) or 'needle' (default: bundled kv)")
    ap.add_argument("--tokens", type=int, required=True, help="haystack length in tokens, as ragcore eval longctx")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    lm = Generator(a.model, "cpu")  # the tokenizer is what matters; the device does not change the items
    items = longctx_items(lm, a.data, a.tokens, a.limit, a.offset)
    folder = resolve(a.model, "generator")
    n_tok = [len(lm.tokenizer(it["text"], add_special_tokens=False)["input_ids"]) for it in items]
    write_json(
        a.out,
        {
            "model": a.model,
            "folder": str(folder),
            "data": str(a.data or "kv_retrieval_75_keys"),
            "tokens": a.tokens,
            "limit": a.limit,
            "offset": a.offset,
            "context_window": lm.context_window,
            "haystack_tokens": n_tok,
            "items": items,
        },
        markdown=False,
        indent=0,
    )
    logger.info(
        "wrote %d items to %s (haystacks %d-%d tokens; model folder for the peer: %s)",
        len(items),
        a.out,
        min(n_tok, default=0),
        max(n_tok, default=0),
        folder,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
