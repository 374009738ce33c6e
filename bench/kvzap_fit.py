"""Fit a KVzap surrogate (``compress.kv.kvzap``) for a model on real contexts: NQ-open prompts and key-value records.

A thin driver of :func:`compress.kv.kvzap.fit_surrogate`. The contexts are the prompts' parts before the question
(what a question-agnostic compression sees), built as the KV suites build them, from slices that no KV headline or
reuse run reads: NQ-open questions 1-300 by default (the first KVzip headline's slice; the KV choices read
301-600, the headline on the surrogate 601-900) and key-value rows from 301 on (the reuse runs read rows 1-30).
The last ``--holdout`` contexts are scored, not fitted (R^2 in the file and the log):

    HF_HUB_OFFLINE=1 python -m bench.kvzap_fit --model qwen2.5-0.5b --limit 300 --kv-limit 40 \\
        --out compress/kv/surrogates/kvzap-qwen2.5-0.5b.safetensors

``--render FILE ... --write-results SECTION`` writes the surrogates' fit (what each file records) as a table.
"""

from __future__ import annotations

import argparse
import logging
import random

from bench.results import write_section
from compress.kv.kvzap import TARGETS, Surrogate, fit_surrogate
from eval.kv_compression import load_items
from ragcore.generator import Generator

logger = logging.getLogger("bench.kvzap_fit")


def render(paths: list[str]) -> str:
    """The fit of each surrogate file (its recorded metadata) as a Markdown table."""
    lines = [
        "| file | model | targets | contexts fitted | tokens | held-out contexts | held-out R^2 (mean over layers) | "
        "lowest layer R^2 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        m = Surrogate.load(path).meta
        low = min(m["r2"]) if m.get("r2") else float("nan")
        lines.append(
            f"| `{path}` | {m.get('model', '?')} | `{m['targets']}` | {m['contexts']} | {m['tokens']} | "
            f"{m.get('holdout', 0)} | {m.get('r2_mean', float('nan')):.3f} | {low:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", nargs="+", default=None, metavar="FILE", help="surrogate files: their fit as a table")
    p.add_argument("--write-results", default=None, metavar="SECTION", help="with --render: the RESULTS section")
    p.add_argument("--note", default="", help="with --render: text before the table")
    p.add_argument("--model", default="qwen2.5-0.5b")
    p.add_argument("--data", default=None, help="NQ-open file (default: the bundled one)")
    p.add_argument("--offset", type=int, default=0, help="first NQ-open question (0-based)")
    p.add_argument("--limit", type=int, default=300, help="NQ-open contexts (0: none)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--retrieved", default=None, help="top k from a `ragcore eval retrieval --dump-retrieved` file")
    p.add_argument("--kv-data", default="eval/data/kv_retrieval_75_keys.jsonl.gz")
    p.add_argument("--kv-offset", type=int, default=300, help="first key-value row (0-based)")
    p.add_argument("--kv-limit", type=int, default=40, help="key-value contexts (0: none)")
    p.add_argument("--kv-max-tokens", type=int, default=2560, help="prompt tokens of a key-value context")
    p.add_argument("--holdout", type=int, default=20, help="contexts scored, not fitted (drawn from both sets)")
    p.add_argument("--ridge", type=float, default=1e-2)
    p.add_argument("--targets", default=TARGETS, help="the KVzip spec whose scores the surrogate predicts")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.render:
        body = "\n\n".join(x for x in (a.note.strip(), render(a.render)) if x)
        print(body)
        if a.write_results:
            write_section(a.write_results, "KV compression: the KVzap surrogates' fit (issue #16)", body)
        return 0
    if not a.out:
        p.error("--out is required (or --render)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    gen = Generator(a.model, device=a.device)
    prompts = []
    if a.limit:
        prompts += [
            it.prompt for it in load_items(gen, a.data, a.k, a.limit, retrieved=a.retrieved, offset=a.offset)[1]
        ]
    if a.kv_limit:
        kv = load_items(gen, a.kv_data, limit=a.kv_limit, offset=a.kv_offset, max_tokens=a.kv_max_tokens)[1]
        prompts += [it.prompt for it in kv]
    random.Random(0).shuffle(prompts)  # the held-out contexts come from both sets
    contexts = [(pr.input_ids[:, : pr.question_start], pr) for pr in prompts]
    sur = fit_surrogate(gen.model, contexts, ridge=a.ridge, holdout=a.holdout, targets=a.targets, progress=True)
    sur.meta.update(model=a.model, nq=[a.offset, a.limit], kv=[a.kv_offset, a.kv_limit, a.kv_max_tokens])
    path = sur.save(a.out)
    logger.info("wrote %s (held-out R^2 %s)", path, sur.meta.get("r2_mean"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
