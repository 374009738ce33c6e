def test_segment_scores_equal_a_loop_over_segments():
    """The mean of each kept segment's avg_k best token scores (or their sum), in O(T log T), as a plain loop."""
    import numpy as np
    import torch

    from ragcore.attribution.tracers import segment_scores

    def loop(ts, owner, segs, k):
        out = np.zeros((ts.shape[0], len(segs)))
        for i, j in enumerate(segs):
            cols = ts[:, torch.as_tensor(owner) == j]
            if cols.shape[1]:
                out[:, i] = (
                    cols.sum(1) if k is None else cols.topk(min(k, cols.shape[1]), dim=1).values.mean(1)
                ).numpy()
        return out

    rng = np.random.default_rng(0)
    for _ in range(200):
        t, n = int(rng.integers(1, 60)), int(rng.integers(1, 8))
        owner = rng.integers(-1, n + 2, t)
        segs = rng.choice(n + 2, size=int(rng.integers(0, n + 2)), replace=False).tolist()  # any order, maybe none
        ts = torch.rand(int(rng.integers(1, 4)), t)
        for k in (None, 1, 3, 100):
            np.testing.assert_allclose(segment_scores(ts, owner, segs, k), loop(ts, owner, segs, k), atol=1e-6)


def test_segment_scores_refuse_a_segment_named_twice():
    import numpy as np
    import pytest
    import torch

    from ragcore.attribution.tracers import segment_scores
    from ragcore.errors import ConfigError

    with pytest.raises(ConfigError, match="each segment once"):
        segment_scores(torch.rand(1, 4), np.array([1, 1, 2, 2]), [1, 1], 5)
