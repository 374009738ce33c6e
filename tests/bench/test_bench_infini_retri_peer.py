"""The infini-retri peer: the inputs writer dumps the suite's own items; the runner's prompt and patches (only
where the package is installed, i.e. in ``.venv-infini``)."""

from __future__ import annotations

import json

import pytest

from eval.context_suites import KV_SYSTEM


def test_inputs_writer_dumps_the_suite_items(tmp_path, monkeypatch, _smol_session):
    from bench.peers.infini_retri import inputs
    from eval import context_suites

    seen = {}

    def fake_items(lm, data, tokens, limit, offset):
        seen.update(data=data, tokens=tokens, limit=limit, offset=offset)
        return [{"id": "0", "text": '"k": "v",', "question": "q?", "answer": "v", "depth": 0.5, "system": KV_SYSTEM}]

    monkeypatch.setattr(inputs, "longctx_items", fake_items)
    monkeypatch.setattr(inputs, "Generator", lambda *a, **k: _smol_session)
    monkeypatch.setattr(inputs, "resolve", lambda *a, **k: "/models/x")
    out = tmp_path / "in.json"
    assert inputs.main(["--tokens", "128", "--limit", "1", "--offset", "3", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert seen == {"data": None, "tokens": 128, "limit": 1, "offset": 3}
    assert got["folder"] == "/models/x" and got["tokens"] == 128 and got["items"][0]["answer"] == "v"
    assert got["haystack_tokens"] == [len(_smol_session.tokenizer('"k": "v",', add_special_tokens=False)["input_ids"])]
    assert context_suites.longctx_items is not fake_items  # the suite itself untouched


def test_peer_template_and_split_pattern():
    pytest.importorskip("infini_retri")
    import re

    from bench.peers.infini_retri import peer

    t = peer.template("Say {x}.")
    assert t.format(context="C", question="Q?") == "Say {x}.\n\nC\n\nQuestion:\n\nQ?\n\nAnswer:"
    t = peer.template(None, '"{k}": "')  # the item's answer prefix after Answer:, braces kept
    assert t.format(context="C", question="Q?") == 'C\n\nQuestion:\n\nQ?\n\nAnswer: "{k}": "'
    lines = re.split(peer.SPLIT_PATTERNS["lines"], '"a": "b",\n"c": "d",')
    assert [x for x in lines if x and x != "\n"] == ['"a": "b",', '"c": "d",']
