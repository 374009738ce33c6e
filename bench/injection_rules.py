"""The rule detector alone, without a model: how many injected strings it flags and how many clean sentences it
flags by mistake. A development check for the rules in ``ragcore/attribution/detectors.py``: run it on the
``dev`` half of the injected strings (``eval.attribution.injections(pool="dev")``) while changing rules; the
``report`` half is for the final figure only.

Each injected string (a ``bastioncorpus`` string or one of ours, followed by a goal sentence) is split into
sentences as the tracers split passages; it counts as caught when any of its sentences is flagged. The clean side
is every sentence of the first ``--clean`` passages of the NQ-open corpus shipped in ``eval/data``.

    python -m bench.injection_rules --pool dev
    python -m bench.injection_rules --pool report --write-results injection-rules
"""

from __future__ import annotations

import argparse

from bench.results import write_section
from eval.attribution import GOALS, injections
from eval.datasets import load_nq_open
from eval.report import table
from ragcore.attribution.segments import sentences
from ragcore.errors import ConfigError
from ragcore.registry import registry


def measure(pool: str, clean: int, spec: str = "rules") -> dict:
    """Share of injected strings caught, share of clean sentences flagged, and the strings missed."""
    det = registry("detector").build(spec)
    strings = injections(0, pool)
    missed, missed_alone = [], []
    for s in strings:
        parts = [s[a:b] for a, b in sentences(s)] or [s]
        if not det.flag(parts):
            missed.append(s)
        alone = next(s[: -len(g)].strip() for g in [*GOALS, ""] if s.endswith(g))  # without the goal sentence
        if not det.flag([alone[a:b] for a, b in sentences(alone)] or [alone]):
            missed_alone.append(alone)
    corpus = load_nq_open(None).corpus[:clean]
    sents = [c.text[a:b] for c in corpus for a, b in sentences(c.text)]
    fp = det.flag(sents)
    return {
        "pool": pool,
        "detector": det.label,
        "strings": len(strings),
        "caught": 1 - len(missed) / len(strings),
        "caught_without_goal": 1 - len(missed_alone) / len(strings),
        "missed_without_goal": missed_alone,
        "clean_sentences": len(sents),
        "clean_flagged": len(fp) / max(1, len(sents)),
        "missed": missed,
        "false_positives": [sents[f.index] for f in fp],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="dev", choices=["dev", "report", "all"])
    ap.add_argument("--clean", type=int, default=2000, help="clean passages whose sentences are checked (>= 1)")
    ap.add_argument(
        "--detector", default="rules", help="a rules spec, e.g. rules(min_hits=2) (the judge needs a model)"
    )
    ap.add_argument("--show", type=int, default=20, help="missed strings and false positives printed (>= 0)")
    ap.add_argument("--write-results", default=None, metavar="SECTION")
    a = ap.parse_args(argv)
    if a.clean < 1 or a.show < 0:
        ap.error(f"--clean takes at least 1 and --show at least 0, got {a.clean} and {a.show}")
    if a.detector.split("(")[0].strip() != "rules":
        ap.error(f"--detector takes a rules spec (the judge needs a model: ragcore eval injection), got {a.detector!r}")
    try:
        r = measure(a.pool, a.clean, a.detector)
    except ConfigError as e:
        ap.error(str(e))
    print(
        f"{r['detector']} on the {a.pool} strings: caught {r['caught']:.3f} of {r['strings']} "
        f"({r['caught_without_goal']:.3f} without their goal sentence); "
        f"clean sentences flagged {r['clean_flagged']:.4f} of {r['clean_sentences']}"
    )
    shown = [("missed", s) for s in r["missed"]] + [("missed without its goal", s) for s in r["missed_without_goal"]]
    for how, s in shown[: a.show]:
        print(f"  {how}:", " ".join(s.split())[:160])
    for s in r["false_positives"][: a.show]:
        print("  false positive:", " ".join(s.split())[:160])
    if a.write_results:
        body = (
            f"Model-free check of the rule detector: injected strings of the `{a.pool}` half "
            "(`eval.attribution.injections`), caught when any of their sentences is flagged; sentences of the first "
            f"{a.clean} NQ-open passages flagged by mistake. `caught_without_goal`: the strings without the goal sentence "
            "that the suite appends (asking for the marker word).\n\n"
            + table(
                [
                    {
                        k: r[k]
                        for k in (
                            "detector",
                            "pool",
                            "strings",
                            "caught",
                            "caught_without_goal",
                            "clean_sentences",
                            "clean_flagged",
                        )
                    }
                ],
                ["detector", "pool", "strings", "caught", "caught_without_goal", "clean_sentences", "clean_flagged"],
                "{:.4f}",
            )
        )
        write_section(a.write_results, "Injected instructions: the rule detector without a model", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
