"""bench.sdpa_backends --compare: the runs side by side, and each model's cuDNN-off run as a ratio of its default."""

import json

from bench.sdpa_backends import main


def _run(cudnn, decode_ms, seconds):
    return {
        "model": "m",
        "gpu": "G",
        "torch": "t",
        "cudnn": cudnn,
        "prefill": [{"tokens": 1000, "first_ms": 9.0, "again_ms": 1.0}],
        "decode": {"tokens": 64, "steps": 3, "median_ms": decode_ms, "mean_ms": decode_ms},
        "longctx": {"method": "infiniretri", "tokens": 2048, "n": 2, "accuracy": 1.0, "seconds_per_query": seconds},
    }


def test_compare_shows_the_speedup_of_cudnn_off(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run("default", 50.0, 2.0)))
    b.write_text(json.dumps(_run("off", 10.0, 0.5)))
    assert main(["--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| m | 5.00x | 4.00x |" in out and "| m | off | 9.0 / 1.0 | 10.0 | 0.500 | 1.00 |" in out
