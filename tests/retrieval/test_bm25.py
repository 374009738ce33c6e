import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from eval.datasets import load_nq_open
from ragcore.errors import ConfigError, EmptyCorpusError
from retrieval.bm25 import BM25Index, tokenize

DATA = "tests/data/nq_small.jsonl.gz"


def test_parity_with_rank_bm25():
    """bm25s with Robertson's BM25 ranks exactly as rank-bm25's BM25Okapi (the reference implementation).

    bm25s leaves out the constant (k1 + 1) factor of the numerator, so scores agree up to that factor.
    """
    ds = load_nq_open(DATA)
    texts = [c.text for c in ds.corpus]
    ours = BM25Index(k1=1.5, b=0.75, method="robertson")
    ours.build(texts)
    ref = BM25Okapi([tokenize(t) for t in texts], k1=1.5, b=0.75)
    for ex in ds.examples:
        s = ours.scores(ex.question)
        r = ref.get_scores(tokenize(ex.question))
        np.testing.assert_allclose(s * 2.5, r, rtol=1e-4, atol=1e-4)
        top, _ = ours.search(ex.question, 10)
        # same ranking: the reference's scores of our top 10 are its own 10 best, in order (ties aside)
        np.testing.assert_allclose(r[top], np.sort(r)[::-1][:10], rtol=1e-5)
        hits = r > 0
        assert set(np.argsort(-s)[: hits.sum()]) == set(np.flatnonzero(hits))


def test_default_lucene_ranks_gold_first_mostly():
    ds = load_nq_open(DATA)
    bm = BM25Index()
    bm.build([c.text for c in ds.corpus])
    ids = [c.id for c in ds.corpus]
    hits = sum(ids[bm.search(ex.question, 1)[0][0]] in ex.gold_ids for ex in ds.examples)
    assert hits / len(ds.examples) > 0.8


def test_tokenize_stems_and_drops_stop_words():
    assert tokenize("The cats are running in the garden") == ["cat", "run", "garden"]


def test_errors():
    with pytest.raises(ConfigError, match="'okapi'"):
        BM25Index(method="okapi")
    with pytest.raises(EmptyCorpusError):
        BM25Index().build([])
    with pytest.raises(EmptyCorpusError):
        BM25Index().scores("anything")


def test_building_logs_nothing_below_warning(capfd):
    """bm25s sets its own logger to DEBUG when imported; a build must not print its debug lines to stderr."""
    import logging

    BM25Index().build(["one document about moons", "another about rings"])
    assert logging.getLogger("bm25s").level == logging.WARNING
    assert "DEBUG" not in capfd.readouterr().err


def test_bm25s_is_imported_without_jax(tmp_path):
    """bm25s imports JAX and runs a top-k at import (JAX then reserves most of a GPU); the index hides JAX from it,
    and JAX stays importable afterwards."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "jax"
    fake.mkdir()
    (fake / "__init__.py").write_text("import pathlib\npathlib.Path(__file__).with_name('imported').write_text('1')\n")
    (fake / "lax.py").write_text("def top_k(x, k):\n    return x[:k], list(range(k))\n")
    code = (
        "import sys\nfrom retrieval.bm25 import BM25Index\nBM25Index().build(['a cat', 'a dog'])\n"
        "assert 'jax' not in sys.modules, 'jax imported by bm25s'\nimport jax\nprint('jax ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "jax ok" in out.stdout and (fake / "imported").exists()  # imported by us, after the index
