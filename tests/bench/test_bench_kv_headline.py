"""bench.kv_headline: the headline's choice rules (development slice alone; development + headline pooled, reported
on a fresh slice) on small hand-made runs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench import kv_headline


def _run(name: str, ratio: float, right: list[int], offset: int) -> dict:
    preds = [{"id": f"q{offset + i}", "accuracy": float(r)} for i, r in enumerate(right)]
    acc = sum(right) / len(right)
    return {"compressor": name, "ratio": ratio, "accuracy": acc, "accuracy_ci95": 0.1, "predictions": preds,
            "kv_bytes": 1.0 - ratio, "kv_bytes_full": 1.0}  # fmt: skip


def _file(tmp: Path, name: str, offset: int, runs: list[dict]) -> str:
    d = {"data": "nq", "model": "m", "n": len(runs[0]["predictions"]), "offset": offset, "query_aware": True, "k": 5}
    p = tmp / f"{name}.json.gz"
    with gzip.open(p, "wt") as f:
        json.dump({**d, "runs": runs}, f)
    return str(p)


@pytest.fixture
def slices(tmp_path):
    """dev (offset 10) and headline (offset 0), four questions each, the full cache right on all of them. A loses one
    dev answer and three headline answers; B loses two dev answers and none on the headline; C equals B."""
    full = [1, 1, 1, 1]
    dev = [_file(tmp_path, "dev-full", 10, [_run("none", 0.0, full, 10)])]
    head = [_file(tmp_path, "head-full", 0, [_run("none", 0.0, full, 0)])]
    for name, d, h in (("A", [0, 1, 1, 1], [0, 0, 0, 1]), ("B", [0, 0, 1, 1], full), ("C", [0, 0, 1, 1], full)):
        dev.append(_file(tmp_path, f"dev-{name}", 10, [_run(name, 0.5, d, 10)]))
        head.append(_file(tmp_path, f"head-{name}", 0, [_run(name, 0.5, h, 0)]))
    return tmp_path, dev, head


def test_dev_rule_and_pooled_rule(slices):
    _, dev, head = slices
    d, h = kv_headline.load_slice(dev, []), kv_headline.load_slice(head, [])
    assert [r["name"] for r in kv_headline.candidates(d, h, pooled=False)[0.5]] == ["A", "B", "C"]
    pooled = kv_headline.candidates(d, h, pooled=True)[0.5]
    assert [r["name"] for r in pooled] == ["B", "C", "A"]  # B and C tie: --dev order keeps B first
    assert pooled[0]["pooled"][0] == pytest.approx(-2 / 8) and pooled[2]["pooled"][0] == pytest.approx(-4 / 8)
    assert kv_headline.picks(d, h) == {0.5: "B"}
    assert "0.5: A -75.0" in kv_headline.render(d, h) and "not met" in kv_headline.render(d, h)


@pytest.mark.parametrize(
    ("fresh_right", "verdict"), [([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "met"), ([0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "not met")]
)
def test_fresh_verdict_is_the_pooled_choice_on_the_fresh_slice(slices, fresh_right, verdict, capsys):
    tmp, dev, head = slices
    full = _file(tmp, "fresh-full", 100, [_run("none", 0.0, [1] * 10, 100)])
    pick = _file(tmp, "fresh-B", 100, [_run("B", 0.5, fresh_right, 100)])
    assert kv_headline.main(["--dev", *dev, "--head", *head, "--picks"]) == 0
    assert json.loads(capsys.readouterr().out) == {"0.5": "B"}
    text = kv_headline.render(kv_headline.load_slice(dev, []), kv_headline.load_slice(head, []),
                              kv_headline.load_slice([full, pick], []))  # fmt: skip
    assert f"at 0.5: B {'+0.0' if verdict == 'met' else '-10.0'} ± " in text
    assert text.rstrip().endswith(f"target at most -1: {verdict}.")
    assert "on the fresh questions" in text and "fresh slice (questions 101-110)" in text


def test_a_slice_without_its_full_cache_is_refused(slices):
    _, dev, _ = slices
    with pytest.raises(SystemExit, match="no full-cache run"):
        kv_headline.load_slice(dev[1:], [])
