"""Issue 12, kinds 4-7: true offsets, token-sized chunks, no file skipped silently, PDF and HTML."""

import json
import os
from pathlib import Path

import pytest

from ragcore.chunking import TokenSizer, chunk_document, chunk_file, chunk_text
from ragcore.cli import main
from ragcore.documents import load_document, scan
from ragcore.errors import DocumentError, UnsupportedFileError
from ragcore.models import load_embedder
from retrieval.bm25 import BM25Index, tokenize
from retrieval.hybrid import HybridRetriever
from retrieval.indexer import sync

ZH = (
    "木星是太阳系中最大的行星，它的质量是其他所有行星质量总和的两倍半。木星主要由氢和氦组成，没有坚硬的表面。"
    "大红斑是木星上一个巨大的风暴，已经持续了至少三百五十年，比地球还要大。"
)
JA = "富士山は日本で最も高い山であり、標高は三千七百七十六メートルです。多くの登山者が夏に山頂を目指します。"


@pytest.fixture(scope="module")
def sizer():
    return TokenSizer(load_embedder("minilm").tokenizer)


def _files(tmp_path):
    """Test files of every kind of text the issue names: CRLF, CR, mixed, BOM, Latin-1, CJK, dashes only."""
    d = tmp_path / "files"
    d.mkdir()
    para = "Jupiter has a storm.\r\nIt is the Great Red Spot.\r\n\r\n"
    (d / "crlf.txt").write_bytes((para * 30 + "# Heading\r\n\r\nLast line.\r\n").encode())
    (d / "cr.txt").write_bytes(b"Old Mac line one.\r\rSecond paragraph here.\rThird line.\r")
    (d / "mixed.md").write_bytes(b"Unix line.\n\r\nWindows line.\r\n\nMore text. " * 20)
    (d / "bom.txt").write_bytes("\ufeffA file that starts with a byte order mark.\r\n".encode())
    (d / "latin1.txt").write_bytes("Crème brûlée à la façon de Zürich.\r\n\r\nÇa coûte très peu.\n".encode("latin-1"))
    (d / "zh.md").write_text(ZH * 3, encoding="utf-8")
    (d / "ja.txt").write_text(JA * 4, encoding="utf-8")
    (d / "dashes.md").write_text("---\n\n* * *\n\n___\n")
    return d


def test_offsets_index_every_file_as_stored(tmp_path, sizer):
    """The example: `open(f, newline="").read()[start:end] == chunk.text` for every chunk of every test file."""
    d = _files(tmp_path)
    n = 0
    for f in sorted(d.iterdir()):
        for kw in ({"max_chars": 120}, {"max_chars": None, "max_tokens": 40, "sizer": sizer, "overlap": 10}):
            for c in chunk_file(f, **kw):
                with open(f, newline="", encoding=c.metadata["encoding"]) as fh:
                    assert fh.read()[c.start : c.end] == c.text, (f.name, c.start)
                n += 1
    assert n > 30


def test_no_chunk_without_word_characters_and_indexing_does_not_crash(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "dashes.md").write_text("---\n\n* * *\n\n___\n")  # the example
    assert chunk_file(d / "dashes.md") == []
    assert chunk_text("=====\n\n- - -\n\n...\n") == []
    mixed = chunk_text("---\n\nReal words here.\n\n* * *\n\n+++\n\nMore words.", max_chars=20)
    assert [c.text for c in mixed] == ["Real words here.", "More words."]
    (d / "ok.txt").write_text("Some real text.")
    assert main(["index", str(d), "--index", str(tmp_path / "idx")]) == 0
    assert "dashes.md: holds no text to index" in capsys.readouterr().out
    bm = BM25Index()
    bm.build(["a", "the of"])  # chunks whose words BM25 drops all: no crash, zero scores
    assert bm.scores("anything").tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("text", "query", "expected"),
    [
        (ZH, "大红斑风暴", 1),
        (JA, "日本で最も高い山", 1),
        ("서울은 한국의 수도입니다. 부산은 항구 도시입니다.", "한국의 수도", 0),
    ],
)
def test_cjk_text_gets_bm25_scores(text, query, expected):
    """The example: one token per unspaced run made every BM25 score 0 for Chinese and Japanese."""
    toks = tokenize(text)
    assert len(toks) > 5 and all(len(t) <= 2 for t in toks)
    docs = [text, "Jupiter is the largest planet.", ZH[:20] if expected else "부산은 항구 도시입니다."]
    bm = BM25Index()
    bm.build(docs)
    s = bm.scores(query)
    assert s.max() > 0 and int(s.argmax()) == (0 if expected == 1 else 0)
    assert tokenize("Mixed 日本語 text") == ["mix", "text", "日本", "本語"]


def test_chunks_fit_the_embedders_window(sizer):
    """The example: a 743-character Chinese chunk was ~780 MiniLM tokens; token-sized chunks are not cut."""
    zh = (ZH * 6)[:743]
    assert sizer.count(zh) > 500  # twice what MiniLM reads (254)
    chunks = chunk_text(zh, "zh", max_chars=None, max_tokens=200, sizer=sizer, overlap=20)
    assert len(chunks) >= 3 and all(sizer.count(c.text) <= 200 for c in chunks)
    en = ("The Voyager probes carried golden records with sounds of Earth. " * 60)[:3200]
    chunks = chunk_text(en, "en", max_chars=None, max_tokens=120, sizer=sizer, overlap=16)
    assert all(sizer.count(c.text) <= 120 for c in chunks)
    assert all(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # neighbours overlap
    assert chunks[-1].end == len(en.rstrip())
    one_word = "x" * 3000  # one 'word' longer than the window is still cut
    assert all(sizer.count(c.text) <= 50 for c in chunk_text(one_word, max_chars=None, max_tokens=50, sizer=sizer))


def test_answer_at_the_end_of_a_long_passage_is_found(tmp_path):
    filler = "The committee discussed budgets, schedules and the colour of the new office chairs at length. " * 30
    (tmp_path / "long.txt").write_text(filler + "The secret launch code of the Ariane rocket is PELICAN-42.\n")
    (tmp_path / "other.txt").write_text("Rockets are launched from Kourou in French Guiana.\n")
    rep = sync(tmp_path / "idx", [tmp_path / "long.txt", tmp_path / "other.txt"])
    assert not rep.truncated
    r = HybridRetriever.load(tmp_path / "idx")
    for mode in ("dense", "hybrid"):
        assert "PELICAN-42" in r.search("What is the secret launch code of the Ariane rocket?", 1, mode)[0].chunk.text


def test_a_truncated_chunk_is_named_in_a_warning(tmp_path, capsys, caplog):
    (tmp_path / "big.txt").write_text("Saturn's rings shine in the evening sky of the outer Solar System. " * 50)
    assert main(["index", str(tmp_path / "big.txt"), "--index", str(tmp_path / "i"), "--max-chars", "3200"]) == 0
    out = capsys.readouterr().out
    assert "chunks are longer than the embedder reads" in out and "big.txt:0-" in out
    assert any("big.txt:0-" in r.getMessage() and "tokens" in r.getMessage() for r in caplog.records)
    assert main(["index", str(tmp_path / "big.txt"), "--index", str(tmp_path / "j"), "--chunk-tokens", "300"]) == 1
    assert "--chunk-tokens: chunk_tokens must be an integer from 8 to 254" in capsys.readouterr().err


def test_one_bad_file_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    """The examples: an unreadable file, a Latin-1 file, an unreadable and a symlinked sub-folder."""
    d = tmp_path / "d"
    (d / "locked").mkdir(parents=True)
    (d / "target").mkdir()
    (d / "good.txt").write_text("Neptune has the fastest winds in the Solar System.\n")
    (d / "secret.txt").write_text("unreadable\n")
    (d / "latin1.txt").write_bytes("Le café crème coûte très peu à Genève.\n".encode("latin-1"))
    (d / "cp1252.md").write_bytes("Müller aß Äpfel – und Öl.\n".encode("cp1252"))
    (d / "locked" / "inside.txt").write_text("hidden by permissions\n")
    (d / "target" / "t.txt").write_text("in a folder reached through a link\n")
    os.symlink(d / "target", d / "link")
    os.symlink(d / "missing", d / "broken.txt")
    (d / "nul.txt").write_bytes(b"\x00\x01\x02\x03 binary")
    real_read, real_scandir = Path.read_bytes, os.scandir

    def read_bytes(self):  # root reads anything: simulate the permission error the OS gives other users
        if self.name == "secret.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(os, "scandir", scandir)
    idx = str(tmp_path / "idx")
    assert main(["index", str(d), "--index", idx, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    reasons = {Path(s["path"]).name: s["reason"] for s in rep["skipped"]}
    assert "Permission denied" in reasons["secret.txt"] and "Permission denied" in reasons["locked"]
    assert "symbolic link" in reasons["link"] and reasons["broken.txt"] == "broken symbolic link"
    assert "binary" in reasons["nul.txt"]
    assert sorted(Path(s).name for s in rep["new"]) == ["cp1252.md", "good.txt", "latin1.txt", "t.txt"]
    r = HybridRetriever.load(idx)
    texts = {Path(c.source_id).name: c.text for c in r.chunks}
    assert texts["latin1.txt"] == "Le café crème coûte très peu à Genève."
    assert texts["cp1252.md"] == "Müller aß Äpfel – und Öl."
    assert main(["index", str(d), "--index", idx]) == 0  # text summary lists the skipped files
    out = capsys.readouterr().out
    assert "skipped 5 paths:" in out and "secret.txt: not readable: Permission denied" in out
    assert main(["index", str(d), "--index", idx, "--strict"]) == 1
    assert "5 paths were skipped (--strict)" in capsys.readouterr().err


def _pdf(path: Path, pages: list[str]) -> None:
    """A minimal PDF with one line of Helvetica text per page."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", None, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % len(objs)
        )
        kids.append(len(objs))
    objs[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i, o)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(bytes(out))


def test_pdf_pages_and_offsets(tmp_path):
    f = tmp_path / "report.pdf"
    _pdf(f, ["Ganymede is the largest moon of Jupiter.", "Titan has lakes of liquid methane.", "Io has volcanoes."])
    doc = load_document(f)
    chunks = chunk_document(doc)
    assert [c.metadata["page"] for c in chunks] == [1, 2, 3]
    assert all(doc.text[c.start : c.end] == c.text for c in chunks)
    assert "Titan" in chunks[1].text and chunks[1].metadata["type"] == "pdf"
    sync(tmp_path / "idx", [f])
    hit = HybridRetriever.load(tmp_path / "idx").search("lakes of methane", 1)[0]
    assert hit.chunk.metadata["page"] == 2
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    with pytest.raises(DocumentError, match="PDF"):
        load_document(tmp_path / "bad.pdf")


def test_html_headings_and_offsets(tmp_path):
    f = tmp_path / "page.html"
    f.write_text(
        "<html><head><title>Planets</title><style>p {color: red}</style><script>var x = 1;</script></head><body>"
        "<p>Intro paragraph about the Solar System.</p><h1>Mars</h1><p>Mars has <b>two</b> moons, Phobos and "
        "Deimos.</p><!-- a comment --><h2>Venus</h2><ul><li>Venus is hot.</li><li>It spins backwards.</li></ul>"
        "</body></html>"
    )
    (tmp_path / "other.htm").write_text("<div><h3>Comets</h3><p>Comets have tails of gas and dust.</p></div>")
    doc = load_document(f)
    assert "var x" not in doc.text and "color" not in doc.text and "comment" not in doc.text
    assert "Mars has two moons, Phobos and Deimos." in doc.text
    chunks = chunk_document(doc)
    assert all(doc.text[c.start : c.end] == c.text for c in chunks)
    by = {c.metadata.get("heading", ""): c for c in chunks}
    assert "Phobos" in by["Mars"].text and "backwards" in by["Venus"].text and "Intro" in by[""].text
    assert all(c.metadata["title"] == "Planets" for c in chunks)
    assert chunk_file(tmp_path / "other.htm")[0].metadata["heading"] == "Comets"


@pytest.mark.parametrize("name", ["data.csv", "report.docx", "notes.json", "Makefile"])
def test_other_types_are_refused_by_name(tmp_path, capsys, name):
    """The example: a .csv named on the command line was read as text."""
    f = tmp_path / name
    f.write_text("a,b\n1,2\n")
    with pytest.raises(UnsupportedFileError, match="not supported; supported: .txt .md"):
        load_document(f)
    assert main(["index", str(f), "--index", str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    assert name in err and "is not supported" in err
    files, skipped = scan([tmp_path])
    assert files == [] and [Path(s.path).name for s in skipped] == [name]
