import json
import subprocess
import sys
import textwrap

import pytest

from ragcore.chunking import chunk_text
from ragcore.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError
from retrieval import store
from retrieval.hybrid import HybridRetriever


def _top(r, q="storm larger than Earth", k=3):
    return [(x.chunk.id, round(x.scores["hybrid"], 5)) for x in r.search(q, k)]


def test_round_trip(tmp_path, retriever):
    assert retriever.save(tmp_path / "idx") == "v000001"
    loaded = HybridRetriever.load(tmp_path / "idx")
    assert [c.to_dict() for c in loaded.chunks] == [c.to_dict() for c in retriever.chunks]
    for mode in ("bm25", "dense", "hybrid"):
        a = [(x.chunk.id, x.scores) for x in loaded.search("tallest volcano", 3, mode)]
        b = [(x.chunk.id, x.scores) for x in retriever.search("tallest volcano", 3, mode)]
        assert [i for i, _ in a] == [i for i, _ in b]
        for (_, sa), (_, sb) in zip(a, b):
            assert sa == pytest.approx(sb, abs=1e-5)
    m = json.loads((tmp_path / "idx" / "v000001" / "manifest.json").read_text())
    assert m["schema_version"] == store.SCHEMA_VERSION and m["embedder"] == "minilm" and m["dim"] == 384
    assert m["counts"]["chunks"] == len(retriever) and "embeddings.npy" in m["files"]
    assert not list((tmp_path / "idx").rglob("*.pkl")) and not list((tmp_path / "idx").rglob("*.pickle"))


def test_adding_documents_makes_a_new_version(tmp_path, retriever):
    retriever.save(tmp_path / "idx")
    r = HybridRetriever.load(tmp_path / "idx")
    assert r.add(chunk_text("Neptune has the strongest winds of any planet.", "neptune")) == 1
    assert r.add(chunk_text("Neptune has the strongest winds of any planet.", "neptune")) == 0  # same id
    assert r.save(tmp_path / "idx") == "v000002"
    r2 = HybridRetriever.load(tmp_path / "idx")
    assert r2.search("strongest winds", 1)[0].chunk.source_id == "neptune"
    old = HybridRetriever.load(tmp_path / "idx", version="v000001")
    assert len(old) == len(r2) - 1
    r2.save(tmp_path / "idx")
    assert store.versions(tmp_path / "idx") == ["v000002", "v000003"]  # older ones pruned


@pytest.mark.parametrize("target", ["embeddings.npy", "chunks.jsonl", "dense.faiss", "bm25/vocab.index.json"])
def test_truncated_file_is_refused(tmp_path, retriever, target):
    retriever.save(tmp_path / "idx")
    retriever.save(tmp_path / "idx")
    p = tmp_path / "idx" / "v000002" / target
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(IndexCorruptError, match="truncated") as e:
        HybridRetriever.load(tmp_path / "idx")
    assert "v000001" in str(e.value)  # the message names the version still loadable
    assert len(HybridRetriever.load(tmp_path / "idx", version="v000001")) == len(retriever)


def test_tampered_file_is_refused(tmp_path, retriever):
    retriever.save(tmp_path / "idx")
    p = tmp_path / "idx" / "v000001" / "chunks.jsonl"
    data = bytearray(p.read_bytes())
    i = data.index(b"Jupiter")
    data[i : i + 7] = b"Jovian!"  # same size, other content
    p.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        HybridRetriever.load(tmp_path / "idx")


def test_missing_or_bad_manifest(tmp_path, retriever):
    retriever.save(tmp_path / "idx")
    m = tmp_path / "idx" / "v000001" / "manifest.json"
    m.write_text("{not json")
    with pytest.raises(IndexCorruptError, match="not valid JSON"):
        HybridRetriever.load(tmp_path / "idx")
    m.unlink()
    with pytest.raises(IndexCorruptError, match="manifest"):
        HybridRetriever.load(tmp_path / "idx")


def test_mismatch_and_absent(tmp_path, retriever):
    with pytest.raises(IndexNotFoundError, match="ragcore index"):
        HybridRetriever.load(tmp_path / "nothing")
    retriever.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="embedder"):
        HybridRetriever.load(tmp_path / "idx", embedder="other-model")
    m = tmp_path / "idx" / "v000001" / "manifest.json"
    d = json.loads(m.read_text())
    d["schema_version"] = 99
    m.write_text(json.dumps(d))
    with pytest.raises(IndexMismatchError, match="99"):
        HybridRetriever.load(tmp_path / "idx")


def test_interrupted_write_leaves_previous_version_loadable(tmp_path, retriever):
    """A save killed midway (after some files are written, before the manifest) changes nothing visible."""
    idx = tmp_path / "idx"
    retriever.save(idx)
    before = _top(HybridRetriever.load(idx))
    script = textwrap.dedent(
        f"""
        import os
        from retrieval.hybrid import HybridRetriever
        from retrieval.dense import DenseIndex
        from ragcore.chunking import chunk_text
        r = HybridRetriever.load({str(idx)!r})
        r.add(chunk_text("Pluto is a dwarf planet.", "pluto"))
        real = DenseIndex.save
        def dying_save(self, folder):
            real(self, folder)   # embeddings and FAISS index are on disk ...
            os._exit(9)          # ... and the process dies before bm25 and the manifest
        DenseIndex.save = dying_save
        r.save({str(idx)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert list(idx.glob(".tmp-*")), "the killed save should have left its temporary folder"
    assert store.current_version(idx) == "v000001"
    assert _top(HybridRetriever.load(idx)) == before
    # the next save works and numbers on from the last complete version
    r = HybridRetriever.load(idx)
    r.add(chunk_text("Pluto is a dwarf planet.", "pluto"))
    assert r.save(idx) == "v000002"
