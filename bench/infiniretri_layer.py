"""Which layer's attention should InfiniRetri read? A development check on synthetic key-value haystacks.

For ``--trials`` seeded haystacks of ``--records`` random UUID key-value lines (not from any evaluation file),
the question asks one key; per layer, the share of the ``--top`` context tokens with the highest question
attention (heads summed, question rows averaged, as InfiniRetri reads it) that lie on the asked record's line.
The layer with the highest share is the one to pass as ``infiniretri(layer=L)`` for that model. Writes the
docs/RESULTS.md section ``infiniretri-layer-<model>``.

    python -m bench.infiniretri_layer --model smollm2-135m --trials 3
"""

from __future__ import annotations

import argparse
import random
import uuid

import torch

from bench.results import write_section
from eval.report import table
from ragcore.attention import attention_to_spans
from ragcore.generator import Generator
from ragcore.types import Chunk


def layer_precision(lm: Generator, trials: int, records: int, top: int, seed: int = 0) -> list[float]:
    """Per layer, the mean share of the top ``top`` context tokens that lie on the asked record."""
    rng = random.Random(seed)
    hits = None
    for _ in range(trials):
        recs = [
            (str(uuid.UUID(int=rng.getrandbits(128))), str(uuid.UUID(int=rng.getrandbits(128)))) for _ in range(records)
        ]
        key, value = recs[rng.randrange(records)]
        text = "\n".join(f'"{k}": "{v}",' for k, v in recs)
        p = lm.prompt(f'What is the value of the key "{key}"? Answer with the value only.', [Chunk(text, "kv")])
        offsets = lm.tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        c0 = p.text.index(text)
        line = f'"{key}": "{value}",'
        l0 = p.text.index(line, c0)
        gold = {j for j, (a, _) in enumerate(offsets) if l0 <= a < l0 + len(line)}
        ctx = [j for j, (a, _) in enumerate(offsets) if c0 <= a < c0 + len(text)]
        att = attention_to_spans(lm.model, p.input_ids, p.spans, rows="question")
        per = torch.tensor(
            [
                sum(ctx[i] in gold for i in torch.topk(att.tokens[L].sum(0)[ctx], top).indices.tolist()) / top
                for L in range(att.tokens.shape[0])
            ]
        )
        hits = per if hits is None else hits + per
    return (hits / trials).tolist()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.infiniretri_layer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default=None)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--records", type=int, default=10)
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args(argv)
    lm = Generator(a.model, a.device)
    lm.warm_up()
    prec = layer_precision(lm, a.trials, a.records, a.top)
    best = max(range(len(prec)), key=lambda i: prec[i])
    rows = [
        {"layer": f"{i}{' (best)' if i == best else ''}", "share of top tokens on the asked record": x}
        for i, x in enumerate(prec)
    ]
    body = (
        f"{a.model}: {a.trials} seeded haystacks of {a.records} UUID records; top {a.top} context tokens by question "
        f"attention. Best layer: {best} ({prec[best]:.2f}); last layer: {prec[-1]:.2f}.\n\n"
        + table(rows, ["layer", "share of top tokens on the asked record"], "{:.2f}")
    )
    write_section(
        f"infiniretri-layer-{a.model}", f"InfiniRetri: which layer reads the question's target ({a.model})", body
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
