"""Issue 12, kinds 1 and 2: one file is one source holding its current content; concurrent writers lose nothing."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ragcore.cli import main
from ragcore.errors import IndexMismatchError, SourceNotFoundError
from retrieval import store
from retrieval.hybrid import HybridRetriever
from retrieval.indexer import sync

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "moon.md").write_text("The Moon orbits the Earth every 27 days.\n")
    (d / "mars.txt").write_text("Olympus Mons on Mars is the tallest volcano in the Solar System.\n")
    (d / "sub" / "saturn.txt").write_text("Saturn's rings are made mostly of water ice.\n")
    return d


def _sources(idx):
    return sorted(Path(s).name for s in HybridRetriever.load(idx).sources)


def test_edited_file_holds_only_its_current_content(tmp_path, docs, capsys):
    """The example: after an edit and a re-index, only the new text is found, with offsets into the new file."""
    idx = str(tmp_path / "idx")
    assert main(["index", str(docs), "--index", idx]) == 0
    f = docs / "mars.txt"
    f.write_text("Valles Marineris on Mars is a canyon system longer than the United States is wide.\n")
    assert main(["index", str(docs), "--index", idx]) == 0
    out = capsys.readouterr().out
    assert "0 new, 1 changed, 2 unchanged, 0 removed" in out
    r = HybridRetriever.load(idx)
    mars = [c for c in r.chunks if c.source_id.endswith("mars.txt")]
    assert len(mars) == 1 and "Olympus" not in mars[0].text
    text = f.read_text()
    assert text[mars[0].start : mars[0].end] == mars[0].text
    hits = r.search("tallest volcano Olympus Mons", 3)
    assert all("Olympus" not in h.chunk.text for h in hits)


def test_deleted_file_is_removed_and_counts_are_reported(tmp_path, docs, capsys):
    idx = str(tmp_path / "idx")
    main(["index", str(docs), "--index", idx])
    (docs / "sub" / "saturn.txt").unlink()  # a file in a sub-folder
    (docs / "moon.md").rename(docs / "luna.md")  # a rename: one removed, one new
    capsys.readouterr()
    assert main(["index", str(docs), "--index", idx, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["counts"] == {"new": 1, "changed": 0, "unchanged": 1, "removed": 2, "skipped": 0}
    assert _sources(idx) == ["luna.md", "mars.txt"]
    assert all("rings" not in h.chunk.text for h in HybridRetriever.load(idx).search("rings of Saturn", 5))


def test_a_file_named_directly_does_not_remove_the_others(tmp_path, docs):
    idx = tmp_path / "idx"
    sync(idx, [docs])
    rep = sync(idx, [docs / "mars.txt"])
    assert rep.unchanged == [str(docs / "mars.txt")] and not rep.removed and not rep.written
    assert _sources(idx) == ["mars.txt", "moon.md", "saturn.txt"]


def test_a_run_that_changes_nothing_writes_no_version(tmp_path, docs):
    idx = tmp_path / "idx"
    assert sync(idx, [docs]).version == "v000001"
    rep = sync(idx, [docs])
    assert not rep.written and rep.version == "v000001" and len(rep.unchanged) == 3
    assert store.versions(idx) == ["v000001"]
    (docs / "mars.txt").write_text("")  # now holds no text: its old content goes
    rep = sync(idx, [docs])
    assert rep.removed == [str(docs / "mars.txt")] and rep.version == "v000002"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-chars", "400"], "--chunk-tokens/--overlap/--max-chars"),
        (["--chunk-tokens", "100"], "chunking"),
        (["--overlap", "5"], "chunking"),
        (["--faiss", "HNSW32"], "--faiss"),
        (["--embedder", "sentence-transformers/all-MiniLM-L6-v2"], "--embedder"),
    ],
)
def test_other_settings_are_refused_with_the_difference_named(tmp_path, docs, capsys, flags, named):
    idx = str(tmp_path / "idx")
    assert main(["index", str(docs), "--index", idx]) == 0
    capsys.readouterr()
    assert main(["index", str(docs), "--index", idx, *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ragcore: error:") and named in err and "was asked for" in err
    assert store.versions(idx) == ["v000001"]
    assert main(["index", str(docs), "--index", idx]) == 0  # options left out: the index's own settings


def test_sources_list_and_remove(tmp_path, docs, capsys):
    idx = str(tmp_path / "idx")
    main(["index", str(docs), "--index", idx])
    capsys.readouterr()
    assert main(["sources", "list", "--index", idx, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    mars = str(docs / "mars.txt")
    assert set(listed) == {mars, str(docs / "moon.md"), str(docs / "sub" / "saturn.txt")}
    assert listed[mars]["chunks"] == 1 and len(listed[mars]["sha256"]) == 64
    assert main(["sources", "remove", mars, "--index", idx]) == 0
    assert _sources(idx) == ["moon.md", "saturn.txt"]
    capsys.readouterr()
    assert main(["sources", "remove", str(docs / "moon.mdx"), "--index", idx]) == 1
    err = capsys.readouterr().err
    assert "no source" in err and "moon.md" in err  # names the close match
    assert main(["sources", "list", "-v", "--index", idx]) == 0
    assert "saturn.txt\t1 chunks\ttext" in capsys.readouterr().out


def test_retriever_remove(retriever):
    n = len(retriever)
    assert retriever.remove("mars") == 1 and len(retriever) == n - 1
    assert "mars" not in retriever.sources
    assert all(h.chunk.source_id != "mars" for h in retriever.search("tallest volcano", 5))
    assert retriever.search("Great Red Spot storm", 1)[0].chunk.source_id == "jupiter"
    with pytest.raises(SourceNotFoundError, match="'mars'"):
        retriever.remove("mars")


def test_schema_1_index_still_loads_and_the_next_sync_upgrades_it(tmp_path, docs):
    idx = tmp_path / "idx"
    sync(idx, [docs])
    v = idx / "v000001"
    m = json.loads((v / "manifest.json").read_text())
    (v / "sources.json").unlink()
    del m["files"]["sources.json"], m["counts"]["sources"], m["chunking"]
    m["schema_version"] = 1
    (v / "manifest.json").write_text(json.dumps(m))
    r = HybridRetriever.load(idx)
    assert len(r.sources) == 3 and all(s["sha256"] is None for s in r.sources.values())
    rep = sync(idx, [docs])  # fingerprints unknown: each file is read again, once
    assert len(rep.changed) == 3 and rep.version == "v000002"
    assert json.loads((idx / "v000002" / "manifest.json").read_text())["schema_version"] == store.SCHEMA_VERSION
    assert not sync(idx, [docs]).written


def _writer(folder: Path, idx: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ragcore.cli", "index", str(folder), "--index", str(idx), "--quiet"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_writers_at_once_lose_nothing(tmp_path):
    """The example: two `ragcore index` runs into one index at once; both runs' files are in it afterwards."""
    idx = tmp_path / "idx"
    folders = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        for i in range(3):
            (d / f"{name}{i}.txt").write_text(f"Document {name}{i} is about topic number {i} of folder {name}.\n")
        folders.append(d)
    procs = [_writer(d, idx) for d in folders]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert _sources(idx) == ["a0.txt", "a1.txt", "a2.txt", "b0.txt", "b1.txt", "b2.txt"]
    assert store.versions(idx) == ["v000001", "v000002"]


def test_a_second_writer_waits_for_the_lock_then_fails_clearly(tmp_path, docs, capsys):
    idx = tmp_path / "idx"
    sync(idx, [docs])
    held, release = threading.Event(), threading.Event()

    def hold():
        with store.locked(idx):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        (docs / "new.txt").write_text("A new file about comets and their tails.\n")
        assert main(["index", str(docs), "--index", str(idx), "--lock-timeout", "0.3"]) == 1
        err = capsys.readouterr().err
        assert "being written by another process" in err and "--lock-timeout" in err
        assert main(["sources", "remove", str(docs / "mars.txt"), "--index", str(idx), "--lock-timeout", "0.2"]) == 1
        r = HybridRetriever.load(idx)
        with pytest.raises(Exception, match="another process"):
            store.write_version(idx, lambda f: None, {}, lock_timeout=0.2)  # a bare save waits on the lock too
    finally:
        release.set()
        t.join()
    assert len(r.sources) == 3
    assert sync(idx, [docs]).new == [str(docs / "new.txt")]  # lock released: the run goes through


def test_mismatch_is_a_typed_error(tmp_path, docs):
    sync(tmp_path / "idx", [docs])
    with pytest.raises(IndexMismatchError, match="factory='Flat'"):
        sync(tmp_path / "idx", [docs], factory="HNSW32")
