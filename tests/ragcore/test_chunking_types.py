import pytest

from ragcore.chunking import chunk_file, chunk_text, iter_files
from ragcore.errors import ConfigError, DocumentError
from ragcore.types import Answer, Chunk, Citation, ScoredChunk

TEXT = "# Title\n\nFirst paragraph here.\n\n## Section\nSecond one. It has two sentences.\n\n\n   Third.  \n"


@pytest.mark.parametrize("max_chars", [16, 30, 60, 800])
def test_chunks_keep_exact_offsets(max_chars):
    chunks = chunk_text(TEXT * 3, "src", max_chars=max_chars)
    assert chunks
    for c in chunks:
        assert (TEXT * 3)[c.start : c.end] == c.text
        assert len(c.text) <= max_chars
        assert c.text == c.text.strip()
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)


def test_long_sentence_is_cut_and_nothing_is_lost():
    text = "word " * 500
    chunks = chunk_text(text, "s", max_chars=100)
    assert all(len(c.text) <= 100 for c in chunks)
    assert sum(len(c.text.split()) for c in chunks) == 500


def test_ids_are_stable_and_distinct():
    a = chunk_text(TEXT, "src", max_chars=30)
    b = chunk_text(TEXT, "src", max_chars=30)
    assert [c.id for c in a] == [c.id for c in b]
    assert len({c.id for c in a}) == len(a)
    assert chunk_text(TEXT, "other", max_chars=30)[0].id != a[0].id


def test_json_round_trip():
    c = Chunk("hello", "s", 3, metadata={"title": "T"})
    assert c.end == 8 and Chunk.from_dict(c.to_dict()) == c
    sc = ScoredChunk(c, {"bm25": 1.5, "dense": 0.2}, rank=1)
    assert ScoredChunk.from_dict(sc.to_dict()).to_dict() == sc.to_dict()
    ans = Answer("q", "a", [Citation(1, c.id, "s", 3, 8, 0.5, "hello")], [sc], "m", {"t": 1.0})
    assert Answer.from_dict(ans.to_dict()).to_dict() == ans.to_dict()


def test_bad_values_are_quoted():
    with pytest.raises(ConfigError, match="42"):
        Chunk(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_chars"):
        chunk_text("x", max_chars=3)


def test_files(tmp_path):
    (tmp_path / "a.md").write_text(TEXT)
    (tmp_path / "b.txt").write_text("plain text")
    (tmp_path / "c.bin").write_bytes(b"\0\1")
    files = list(iter_files([tmp_path]))
    assert [f.name for f in files] == ["a.md", "b.txt"]
    c = chunk_file(files[0])[0]
    assert c.source_id == str(files[0]) and TEXT[c.start : c.end] == c.text
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_files([tmp_path / "nope"]))
    (tmp_path / "bad.txt").write_bytes(b"\x00\x01\x02 binary")  # not text in any encoding (issue 12 reads Latin-1)
    with pytest.raises(DocumentError, match="binary"):
        chunk_file(tmp_path / "bad.txt")
