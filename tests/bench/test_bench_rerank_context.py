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
