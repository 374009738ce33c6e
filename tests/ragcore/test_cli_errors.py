"""Issue 12, kinds 10 and 12: errors, not tracebacks; help a newcomer can use."""

import errno
import json
import os
import re
import shlex
import stat
from pathlib import Path

import pytest

from ragcore import cli
from ragcore.cli import build_parser, main
from retrieval import store
from retrieval.hybrid import HybridRetriever

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in {
        "a.txt": "Ganymede is the largest moon in the Solar System.",
        "b.txt": "Titan has a thick nitrogen atmosphere.",
        "c.txt": "Europa may hide an ocean under its ice.",
    }.items():
        (d / name).write_text(text + "\n")
    return d


def _one_error_line(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and err.startswith("ragcore: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_index_path_that_is_a_file_is_refused_before_embedding(tmp_path, docs, capsys, monkeypatch):
    f = tmp_path / "notes.txt"
    f.write_text("a file, not an index\n")

    def no_embedding(*a, **k):
        raise AssertionError("embedded before checking --index")

    monkeypatch.setattr("retrieval.hybrid.load_embedder", no_embedding)
    assert main(["index", str(docs), "--index", str(f)]) == 1
    _one_error_line(capsys.readouterr().err, "--index:", "is a file, not an index folder", "hint:")
    for cmd in (["search", "x"], ["sources", "list"], ["sources", "remove", "a"]):
        assert main([*cmd, "--index", str(f)]) == 1
        _one_error_line(capsys.readouterr().err, "is a file")
    assert f.read_text() == "a file, not an index\n"


def test_disk_full_while_saving(tmp_path, docs, capsys, monkeypatch):
    idx = tmp_path / "idx"
    assert main(["index", str(docs), "--index", str(idx)]) == 0
    (docs / "d.txt").write_text("Callisto is heavily cratered.\n")

    def full(self, folder):
        (folder / "embeddings.npy").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("retrieval.dense.DenseIndex.save", full)
    capsys.readouterr()
    assert main(["index", str(docs), "--index", str(idx)]) == 1
    _one_error_line(capsys.readouterr().err, "no space left on the device", "CURRENT still names v000001", "hint:")
    assert store.current_version(idx) == "v000001" and not list(idx.glob(".tmp-*"))
    assert len(HybridRetriever.load(idx)) == 3


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF4,Flat", "Bogus99"])
def test_faiss_factories_that_cannot_work_are_errors(tmp_path, docs, capsys, factory):
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "--faiss", factory]) == 1
    err = capsys.readouterr().err
    _one_error_line(err, "--faiss:", repr(factory))
    if factory.startswith("IVF"):
        assert "needs at least" in err and "there are 3" in err
    assert not (tmp_path / "i").exists()


def test_a_model_not_in_the_local_cache_while_offline(tmp_path, docs, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "--embedder", "nobody/no-such-model"]) == 1
    _one_error_line(capsys.readouterr().err, "--embedder:", "not in the local Hugging Face cache", "'minilm'")
    assert main(["index", str(docs), "--index", str(tmp_path / "i")]) == 0
    capsys.readouterr()
    ask = ["ask", "moon?", "--index", str(tmp_path / "i"), "--model", "nobody/no-such-generator", "--device", "cpu"]
    assert main(ask) == 1
    _one_error_line(capsys.readouterr().err, "--model:", "not in the local Hugging Face cache", "'smollm2-135m'")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_device_cuda_without_a_cuda_build(tmp_path, docs, capsys, device):
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "--device", device]) == 1
    _one_error_line(capsys.readouterr().err, "--device:", f"'{device}'", "CPU-only build")
    main(["index", str(docs), "--index", str(tmp_path / "i")])
    capsys.readouterr()
    assert main(["ask", "moon?", "--index", str(tmp_path / "i"), "--model", "smollm2-135m", "--device", device]) == 1
    _one_error_line(capsys.readouterr().err, "--device:")
    with pytest.raises(SystemExit) as e:  # search takes no --device: a usage error
        main(["search", "moon", "--index", str(tmp_path / "i"), "--device", device])
    assert e.value.code == 2


@pytest.mark.parametrize("where", ["retrieval.hybrid.embed", "retrieval.dense.DenseIndex.save"])
def test_ctrl_c_exits_130_and_writes_nothing(tmp_path, docs, capsys, monkeypatch, where):
    idx = tmp_path / "idx"
    assert main(["index", str(docs), "--index", str(idx)]) == 0
    (docs / "d.txt").write_text("Callisto is heavily cratered.\n")

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupt)
    capsys.readouterr()
    assert main(["index", str(docs), "--index", str(idx)]) == 130
    assert capsys.readouterr().err.startswith("ragcore: interrupted; nothing was written")
    assert store.versions(idx) == ["v000001"] and not list(idx.glob(".tmp-*")) and not list(idx.glob(".CURRENT-*"))
    assert len(HybridRetriever.load(idx)) == 3


def test_eval_outputs_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the evaluation ran before --out was checked")

    monkeypatch.setattr("eval.runner.eval_retrieval", no_work)
    (tmp_path / "folder").mkdir()
    for out, needle in [("x.md", "ends in .md"), ("RESULTS.MD", "ends in .md"), ("folder", "is a folder")]:
        assert main(["eval", "retrieval", "--out", str(tmp_path / out)]) == 1
        _one_error_line(capsys.readouterr().err, "--out:", needle)
    (tmp_path / "afile").write_text("")
    assert main(["eval", "retrieval", "--out", str(tmp_path / "afile" / "r.json")]) == 1
    _one_error_line(capsys.readouterr().err, "--out:", "is a file, not a folder")
    assert main(["eval", "retrieval", "--dump-retrieved", str(tmp_path / "folder")]) == 1
    _one_error_line(capsys.readouterr().err, "--dump-retrieved:", "is a folder")


def test_the_markdown_table_does_not_overwrite_the_json(tmp_path):
    from eval.report import write_json

    write_json(tmp_path / "r.json", {"bm25": {"mrr": 0.5}})
    assert json.loads((tmp_path / "r.json").read_text()) == {"bm25": {"mrr": 0.5}}
    assert (tmp_path / "r.md").read_text().startswith("| | mrr |")


def test_load_errors_advise_only_options_the_command_takes(tmp_path, docs, capsys):
    idx = tmp_path / "idx"
    main(["index", str(docs), "--index", str(idx)])
    (docs / "d.txt").write_text("Callisto is heavily cratered.\n")
    main(["index", str(docs), "--index", str(idx)])
    p = idx / "v000002" / "chunks.jsonl"
    p.write_bytes(p.read_bytes()[:10])
    capsys.readouterr()
    assert main(["index", str(docs), "--index", str(idx)]) == 1
    err = capsys.readouterr().err
    _one_error_line(err, "truncated", "v000001")
    assert "load one with --index-version" not in err and "`ragcore search --index-version v000001`" in err
    assert main(["search", "moon", "--index", str(idx)]) == 1
    _one_error_line(capsys.readouterr().err, "hint: an older complete version may still load: --index-version v000001")
    assert main(["search", "moon", "--index", str(idx), "--index-version", "v000001"]) == 0


@pytest.mark.parametrize("version", ["../../etc", "v1", "/etc/passwd", "v000001/../../x"])
def test_index_version_is_validated(tmp_path, docs, capsys, version):
    main(["index", str(docs), "--index", str(tmp_path / "idx")])
    capsys.readouterr()
    assert main(["search", "moon", "--index", str(tmp_path / "idx"), "--index-version", version]) == 1
    _one_error_line(capsys.readouterr().err, "--index-version:", "must look like 'v000001'", repr(version))
    assert main(["search", "moon", "--index", str(tmp_path / "idx"), "--index-version", "v000009"]) == 1
    _one_error_line(capsys.readouterr().err, "has no version 'v000009'")


@pytest.mark.parametrize(
    ("umask", "dmode", "fmode"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664), (0o077, 0o700, 0o600)]
)
def test_index_files_follow_the_umask(tmp_path, docs, umask, dmode, fmode):
    from eval.report import write_json
    from retrieval.indexer import sync

    old = os.umask(umask)
    try:
        sync(tmp_path / "idx", [docs])
        write_json(tmp_path / "out" / "r.json", {"a": {"x": 1.0}})
    finally:
        os.umask(old)
    paths = [tmp_path / "idx", *(tmp_path / "idx").rglob("*"), tmp_path / "out" / "r.json", tmp_path / "out" / "r.md"]
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (dmode if p.is_dir() else fmode), (p, oct(mode))


def test_exit_codes_are_distinct(tmp_path, docs, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["index"])  # usage
    assert e.value.code == 2
    assert main(["search", "x", "--index", str(tmp_path / "none")]) == 1  # user error
    capsys.readouterr()

    def bug(*a, **k):
        raise TypeError("unexpected None")

    monkeypatch.setattr("retrieval.indexer.sync", bug)
    assert main(["index", str(docs), "--index", str(tmp_path / "i")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("ragcore: internal error: TypeError: unexpected None") and "Traceback" not in err
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "-v"]) == 3
    assert "Traceback" in capsys.readouterr().err
    assert {cli.EXIT_OK, cli.EXIT_USER, cli.EXIT_USAGE, cli.EXIT_INTERNAL, cli.EXIT_INTERRUPTED} == {0, 1, 2, 3, 130}


# -- kind 12 -------------------------------------------------------------------------------------------------


def _sub(name):
    p = build_parser()
    return next(a for a in p._actions if a.dest == "command").choices[name]


def test_every_index_option_has_help_and_a_default():
    sp = _sub("index")
    for a in sp._actions:
        if a.dest in ("help",) or not a.option_strings:
            continue
        assert a.help, a.dest
        if a.nargs != 0:  # options taking a value say their default
            assert "default" in a.help, a.dest
    text = sp.format_help()
    for flag in ("--chunk-tokens", "--overlap", "--faiss", "--embedder", "--strict", "--json", "--quiet"):
        assert flag in text


def test_model_help_lists_the_names_and_the_same_default():
    for cmd in ("ask", "eval"):
        a = next(x for x in _sub(cmd)._actions if x.dest == "model")
        assert a.default == "qwen2.5-0.5b"
        assert "smollm2-135m" in a.help and "qwen2.5-0.5b" in a.help and "default qwen2.5-0.5b" in a.help
    emb = next(x for x in _sub("index")._actions if x.dest == "embedder")
    assert "minilm" in emb.help


def test_version_verbose_after_the_subcommand_and_k(tmp_path, docs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and re.match(r"ragcore \d+\.\d+", capsys.readouterr().out)
    p = build_parser()
    for argv in (["-v", "search", "q"], ["search", "q", "-v"], ["search", "-v", "q"]):
        assert p.parse_args(argv).verbose is True
    assert p.parse_args(["search", "q"]).verbose is False
    assert p.parse_args(["search", "q", "--quiet"]).quiet is True
    for cmd in (["search", "q"], ["ask", "q"], ["eval", "kv"]):
        assert p.parse_args([*cmd, "-k", "7"]).k == 7 and p.parse_args([*cmd, "--k", "8"]).k == 8


def test_default_index_location_is_documented():
    assert ".ragcore/index" in build_parser().format_help()
    for cmd in ("index", "search", "ask", "sources"):
        assert ".ragcore/index" in _sub(cmd).format_help() or cmd == "sources"


def test_quiet_json_and_errors_not_mixed_with_progress(tmp_path, docs, capsys):
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "--quiet", "--json"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""
    rep = json.loads(cap.out)
    assert rep["counts"]["new"] == 3 and rep["version"] == "v000001" and rep["written"] is True
    assert rep["settings"]["chunking"] == {"unit": "tokens", "size": 200, "overlap": 20}
    assert main(["index", str(docs), "--index", str(tmp_path / "i"), "--faiss", "HNSW32"]) == 1
    _one_error_line(capsys.readouterr().err)  # no progress bar on the error line


def test_the_demo_does_not_index_the_samples_readme(tmp_path, capsys):
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "ragcore index" in ln)
    args = shlex.split(line.split("ragcore", 1)[1])
    args[args.index("--index") + 1] = str(tmp_path / "demo")
    args = [str(ROOT / a) if (ROOT / a).exists() else a for a in args]
    assert main(args) == 0
    sources = HybridRetriever.load(tmp_path / "demo").sources
    assert sources and not any(s.endswith("README.md") for s in sources)
    assert {Path(s).name for s in sources} >= {"jupiter.md", "earth.txt"}


def test_serve_refuses_a_port_out_of_range_before_loading(capsys):
    """New-user report: --port 99999 reached uvicorn and ended in a traceback; --port 0 listened on a port nobody
    was told about."""
    from ragcore.cli import main

    for port in ("99999", "0", "-1"):
        assert main(["serve", "--port", port, "--index", "/nowhere"]) == 1
        err = capsys.readouterr().err
        assert (
            err.startswith(f"ragcore: error: --port: port must be in 1..65535, got {int(port)}")
            and "Traceback" not in err
        )
