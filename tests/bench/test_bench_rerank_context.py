"""bench.rerank_context's choice of the CRAG setting on the development slice."""

from bench.rerank_context import choose_crag


def run(method: str, saved: float, diff: float) -> dict:
    return {"method": method, "tokens_saved": saved, "accuracy_diff": diff}


def test_the_least_loss_among_settings_that_save_enough_tokens_wins():
    runs = [run("crag", 0.75, -0.10), run("crag(sentences=8)", 0.50, -0.01), run("crag(sentences=12)", 0.30, 0.0)]
    assert choose_crag(runs) == "crag(sentences=8)"  # sentences=12 loses less but saves too little
    runs.append(run("crag(k=5)", 0.60, -0.01))
    assert choose_crag(runs) == "crag(k=5)"  # a tie in accuracy goes to the bigger saving


def test_when_none_saves_enough_the_least_loss_wins():
    assert choose_crag([run("a", 0.2, -0.05), run("b", 0.3, -0.02)]) == "b"


def test_runs_without_generation_are_chosen_by_the_answer_kept():
    def kept(method: str, saved: float, share: float) -> dict:
        return {"method": method, "tokens_saved": saved, "answer_kept": share}

    runs = [kept("a", 0.55, 0.90), kept("b", 0.50, 0.95), kept("c", 0.40, 0.99)]
    assert choose_crag(runs) == "b"  # c keeps more but saves too little
    assert choose_crag([*runs, {**run("d", 0.6, 0.0), "answer_kept": 0.5}]) == "b"  # one measure for all runs


def test_a_run_without_the_measure_is_named_not_chosen():
    import pytest

    from ragcore.errors import ConfigError

    runs = [{"method": "old", "tokens_saved": 0.5}, {"method": "a", "tokens_saved": 0.4, "answer_kept": 0.9}]
    with pytest.raises(ConfigError, match=r"answer_kept of every run; these have none: \['old'\]"):
        choose_crag(runs)


def _crag(path, method: str, offset: int = 0, answered: bool = True) -> str:
    """A one-question run of `eval crag`; ``answered=False``: of `eval crag --no-generate` (no accuracy)."""
    import json

    from eval.context_suites import crag_summary

    arm = {"accuracy": 1.0} if answered else {"answer_kept": 1.0}
    pred = {
        "id": f"q{offset}",
        "plain": {"tokens": 10, "seconds": 1.0, **arm},
        method: {"tokens": 4, "seconds": 1.0, **arm},
    }
    res = {"suite": "crag", "model": "m", "k": 10, "data": "d", "method": method, "offset": offset}
    path.write_text(json.dumps({**res, **crag_summary([pred], method)}))
    return str(path)


def test_bad_files_get_one_line_and_crag_renders_one_setting(tmp_path, capsys):
    import pytest

    from bench.rerank_context import main

    a, b = _crag(tmp_path / "a.json", "crag"), _crag(tmp_path / "b.json", "crag(k=2)")
    for argv, said in (
        (["crag", a, b], "one setting's shards"),
        (["choose-crag", a, a], "twice"),
        (["crag", str(tmp_path / "missing.json")], "missing.json"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err
    (tmp_path / "p.json").write_text('{"suite": "poisoned"}')
    with pytest.raises(SystemExit):
        main(["crag", str(tmp_path / "p.json")])
    assert "not crag results" in capsys.readouterr().err


def test_each_position_section_keeps_its_own_figure(tmp_path, monkeypatch):
    """Two sweeps of one model rendered into two sections write two figures, not one overwritten."""
    import bench.rerank_context as rc

    monkeypatch.setattr(rc, "FIGURES", tmp_path)
    s = {"accuracy": {"0": 0.5, "9": 0.4}, "accuracy_avg": 0.45, "seconds_per_query": 1.0}
    res = {"model": "m", "n": 2, "offset": 0, "positions": [0, 9], "orders": {"retrieval": s}}
    a, b = rc.position_body(res, None, "sweep-a"), rc.position_body(res, None, "sweep-b")
    assert "figures/position_sweep-a.png" in a and "figures/position_sweep-b.png" in b
    assert {p.name for p in tmp_path.iterdir()} == {"position_sweep-a.png", "position_sweep-b.png"}
    assert "figures/position_m.png" in rc.position_body(res, None)


def test_the_sweep_says_whether_accuracy_follows_the_profile(tmp_path, monkeypatch):
    """With a profile, the retrieval order's accuracy per slot is set beside the profile's share of that slot."""
    import bench.rerank_context as rc

    monkeypatch.setattr(rc, "FIGURES", tmp_path)
    acc = {"0": 0.4, "2": 0.2, "5": 0.1, "9": 0.3}
    s = {"accuracy": acc, "accuracy_avg": 0.25, "seconds_per_query": 1.0}
    res = {"model": "m", "n": 2, "offset": 0, "positions": [0, 2, 5, 9], "orders": {"retrieval": s}}
    basin = [0.3, 0.1, 0.05, 0.04, 0.03, 0.02, 0.04, 0.06, 0.1, 0.26]
    body = rc.position_body(res, {"attention": [basin[::-1], basin], "layer": 1})
    assert "slot 1: 0.400 / 0.300" in body and "+1.00" in body and "slot (1) is the one" in body
    ramp = {"attention": [sorted(basin)], "layer": 0}  # attention rising toward the question: the opposite order
    body = rc.position_body(res, ramp)
    assert "Spearman's rank correlation over the 4 slots: -0.40" in body and "(10) is not the one" in body
    assert "Does accuracy follow" not in rc.position_body({**res, "orders": {"x": s}}, ramp)


def test_the_profile_sentence_claims_nothing_ties_or_gaps_do_not_support(tmp_path, monkeypatch, capsys):
    """Ties at the best slot are named as ties, a constant or NaN accuracy leaves the correlation undefined (no
    "+nan", no slot called the best), and a sweep the profile cannot describe (a slot past the profile's end, a
    rank the retrieval order lacks, another model's profile) is one line from the command, not a traceback."""
    import json

    import pytest

    import bench.rerank_context as rc

    monkeypatch.setattr(rc, "FIGURES", tmp_path)
    monkeypatch.setattr(rc, "write_section", lambda *a: pytest.fail(f"wrote a section: {a[0]}"))
    basin = [0.3, 0.1, 0.05, 0.04, 0.03, 0.02, 0.04, 0.06, 0.1, 0.26]
    prof = {"attention": [basin], "layer": 0, "model": "m"}

    def res(acc):
        s = {"accuracy": acc, "accuracy_avg": 0.25, "seconds_per_query": 1.0}
        return {"model": "m", "n": 2, "offset": 0, "positions": [int(p) for p in acc], "orders": {"retrieval": s}}

    flat = rc.follows_profile(res({"0": 0.0, "2": 0.0, "5": 0.0, "9": 0.0}), prof)
    assert "nan" not in flat and "undefined" in flat and "answered best" not in flat
    tied = rc.follows_profile(res({"0": 0.5, "2": 0.0, "5": 0.0, "9": 0.5}), {**prof, "attention": [basin[::-1]]})
    assert "(10) is one of the slots where the gold passage is answered best (1, 10)" in tied, tied
    nan = rc.follows_profile(res({"0": float("nan"), "2": 0.2, "5": 0.1, "9": 0.3}), prof)
    assert "nan" not in nan.replace("slot 1: nan", "") and "over the 3 slots with an accuracy" in nan, nan
    assert "(10)" in nan.split("answered best")[1]
    one = rc.follows_profile(res({"0": 0.4}), prof)
    assert "nan" not in one and "undefined" in one
    for bad, said in (
        ({**res({"0": 0.4, "2": 0.1}), "positions": [0, 2, 5]}, "no accuracy at gold rank 6"),
        (res({"0": 0.4, "12": 0.1}), "10 slots"),
        ({**res({"0": 0.4, "2": 0.1}), "model": "other"}, "'m'"),
    ):
        with pytest.raises(rc.ConfigError, match=said):
            rc.follows_profile(bad, prof)
        (tmp_path / "r.json").write_text(json.dumps(bad))
        (tmp_path / "p.json").write_text(json.dumps(prof))
        with pytest.raises(SystemExit) as e:
            rc.main(["position", str(tmp_path / "r.json"), "--profile", str(tmp_path / "p.json"), "--section", "x"])
        assert e.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        rc.main(["position", str(tmp_path / "r.json"), "--profile", str(tmp_path / "none.json"), "--section", "x"])
    assert e.value.code == 2 and "none.json" in capsys.readouterr().err


def test_runs_without_answers_are_chosen_from_not_rendered_nor_mixed(tmp_path, capsys):
    import pytest

    from bench.rerank_context import main

    bare, other = (
        _crag(tmp_path / "a.json", "crag", answered=False),
        _crag(tmp_path / "b.json", "crag(k=2)", answered=False),
    )
    answered = _crag(tmp_path / "c.json", "crag(k=3)")
    assert main(["choose-crag", bare, other]) == 0 and capsys.readouterr().out.strip() in ("crag", "crag(k=2)")
    for argv, said in (
        (["crag", bare], "made with --no-generate"),
        (["choose-crag", bare, answered], "runs with answers and runs without"),
        (["choose-crag", bare, _crag(tmp_path / "d.json", "crag(k=4)", offset=5, answered=False)], "of one offset"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and said in capsys.readouterr().err, argv


def test_speedup_is_the_geometric_mean_of_paired_ratios_with_an_interval():
    from bench.rerank_context import speedup_ci

    assert speedup_ci([4.0, 4.0], [1.0, 1.0]) == "4.00x [4.00, 4.00]"
    said = speedup_ci([2.0, 8.0, 4.0], [1.0, 1.0, 1.0])  # ratios 2, 8, 4: geometric mean 4, an interval around it
    mid, lo, hi = (float(x) for x in said.replace("x [", " ").replace(",", "").rstrip("]").split())
    assert mid == 4.0 and lo < 4.0 < hi
    assert speedup_ci([], []) == "-"


def test_sortboth_checks_its_specs_before_any_run(tmp_path):
    """SORT_SPECS: each spec one reranker the registry accepts, none empty, no setting twice (two runs writing one
    file, or merged as overlapping shards); a bad list ends gpu_rerank_context.sh before it starts any run."""
    import os
    import subprocess
    import sys

    import pytest

    from bench.rerank_context import dev_orders
    from ragcore.errors import ConfigError

    assert dev_orders(" attention_sort ; attention_sort(place = 'first', query='question')") == [
        "attention_sort",
        "attention_sort(place='first', query='question')",
    ]
    assert dev_orders("attention_sort(calibration='na')") == ["attention_sort(calibration='na')"]
    for text, said in (
        ("attention_sort(calibration='NA')", "'NA'"),
        ("attention_sort;", "empty spec"),
        (" ", "empty spec"),
        ("attention_sort,reversed", "one reranker per spec"),
        ("attention_sort;attention_sort(rounds=2)", "one setting"),
        ("attention_sort(place='first');attention_sort(place = 'first')", "one setting"),
    ):
        with pytest.raises(ConfigError, match=said):
            dev_orders(text)
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "N_SORTDEV": "1", "N_POSITION": "1"}
    env["SORT_SPECS"] = "attention_sort(query=1)"
    run = subprocess.run(
        ["bash", "bench/gpu_rerank_context.sh", str(out), "sortboth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "SORT_SPECS" in run.stderr and "got 1" in run.stderr, run.stderr
    assert not list(out.glob("*")), "a run started"
