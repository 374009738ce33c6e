"""The KV-cache compression suite (``ragcore eval kv``): answer accuracy and KV-cache memory under a compressor.

One run (``KVSuite.run``) is one compressor at one ratio; a matrix (``KVSuite.matrix``) is every compressor at
every ratio over prompts built once, with one full-cache run shared by all; ``merge_matrices`` joins matrices
run in several processes. Runs are compared with the paired statistics of ``eval.stats``; figures are in
docs/RESULTS.md (sections ``kv-*``).

Two data formats, told apart by their rows:

* ``"nq"``, NQ-open (``question``, ``answers``, ``gold``; format of ``nq_open_oracle_dev.jsonl.gz``): the
  passages are the top ``k`` retrieved from the file's own corpus (``eval.runner.passage_source``); scored by NQ
  accuracy.
* ``"kv_retrieval"``, key-value retrieval (``ordered_kv_records``, ``key``, ``value``; format of
  ``kv_retrieval_75_keys.jsonl.gz``): the records are shown as one JSON object in one passage and the model is
  asked for the value of ``key``; records are cut (a window around the gold record) until the prompt fits
  ``max_tokens``; scored by whether the value string appears in the answer. Result files written before the
  rename say ``"format": "kv"`` (:func:`format_name` reads both).

By default compression is question-agnostic (the context is compressed before the question is read); see
``Generator.generate``. ``load_items`` and ``run_items`` are separate so that a caller can build the prompts once
and run many compressors over them (``KVSuite.matrix`` does).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval import metrics
from eval.datasets import NQ_OPEN, load_nq_open, read_jsonl
from eval.report import read_json
from eval.stats import mean_ci
from ragcore.errors import ConfigError
from ragcore.generator import Generation, GenerationConfig, Generator
from ragcore.prompt import Prompt
from ragcore.types import Chunk

logger = logging.getLogger(__name__)

FORMATS = ("nq", "kv_retrieval")
LEGACY_FORMATS = {"kv": "kv_retrieval"}  # the name in result files written before the rename
KV_RETRIEVAL_SYSTEM = "You read a JSON object of key-value pairs and answer with the value of the requested key only."
DEFAULT_NEW_TOKENS = {"nq": 32, "kv_retrieval": 64}
MATRIX_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def format_name(fmt: str) -> str:
    """The current name of a data format read from a result file (``"kv"`` -> ``"kv_retrieval"``)."""
    return LEGACY_FORMATS.get(fmt, fmt)


@dataclass
class EvalItem:
    """One question of the suite: its id, the prompt built once, and the gold answers."""

    id: str
    prompt: Prompt
    answers: list[str]


def detect_format(rows: list[dict], path: str | Path = "") -> str:
    """``"nq"`` or ``"kv_retrieval"`` from the fields of the first row."""
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no rows")
    r = rows[0]
    if isinstance(r, dict) and {"ordered_kv_records", "key", "value"} <= set(r):
        return "kv_retrieval"
    if isinstance(r, dict) and {"question", "answers", "gold"} <= set(r):
        return "nq"
    fields = sorted(r) if isinstance(r, dict) else type(r).__name__
    raise ConfigError(
        f"{str(path)!r}: unknown row format with fields {fields!r}; expected NQ-open (question, answers, gold) "
        "or key-value retrieval (ordered_kv_records, key, value)"
    )


def _window_limit(gen: Generator, max_tokens: int | None, new_tokens: int) -> int:
    window = int(getattr(gen.model.config, "max_position_embeddings", 0) or 2048)
    limit = window if max_tokens is None else min(max_tokens, window)
    if limit <= new_tokens + 16:
        raise ConfigError(
            f"max_tokens={max_tokens!r} leaves no room for a prompt and {new_tokens} new tokens", param="max_tokens"
        )
    return limit - new_tokens


window_limit = _window_limit  # public: the prompt budget other suites (eval.kv_reuse) fit to


def kv_retrieval_prompt(gen: Generator, row: dict, budget: int) -> Prompt:
    """The key-value retrieval prompt with as many records (a window holding the gold one) as fit in ``budget``
    tokens."""
    records = [tuple(r) for r in row["ordered_kv_records"]]
    key = row["key"]
    keys = [k for k, _ in records]
    if key not in keys:
        raise ConfigError(f"key {key!r} is not among its row's ordered_kv_records")
    gold = keys.index(key)
    question = f'What is the value of the key "{key}" in the JSON object above? Answer with the value only.'

    def build(m: int) -> Prompt:
        start = min(max(0, gold - int(m * gold / len(records))), len(records) - m)
        text = json.dumps(dict(records[start : start + m]), indent=1)
        return gen.prompt(question, [Chunk(text, "kv-records")], system=KV_RETRIEVAL_SYSTEM)

    lo, hi, best = 1, len(records), None
    while lo <= hi:  # the largest record count that fits
        mid = (lo + hi) // 2
        p = build(mid)
        if len(p) <= budget:
            best, lo = p, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise ConfigError(
            f"even one key-value record does not fit in {budget} prompt tokens", param="max_tokens", hint="raise it"
        )
    return best


def load_items(
    gen: Generator,
    data: str | Path | None = None,
    k: int = 5,
    limit: int | None = None,
    max_tokens: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
    retrieved: str | Path | None = None,
    offset: int = 0,
) -> tuple[str, list[EvalItem]]:
    """Build the prompts once: returns the detected format and the items (``limit`` of them after the first
    ``offset``; an offset keeps a development slice apart from the questions a headline is measured on)."""
    from eval.runner import passage_source

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}", param="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"offset must be a non-negative integer, got {offset!r}", param="offset")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}", param="k")
    path = Path(data) if data else NQ_OPEN
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    rows = read_jsonl(path)
    fmt = detect_format(rows, path)
    if offset >= len(rows):
        raise ConfigError(f"offset {offset} skips all {len(rows)} items of {str(path)!r}", param="offset")
    gen.warm_up()
    budget = _window_limit(gen, max_tokens, max_new_tokens or DEFAULT_NEW_TOKENS[fmt])
    items: list[EvalItem] = []
    if fmt == "kv_retrieval":
        for i, row in enumerate(tqdm(rows[offset:][:limit], desc="key-value prompts", disable=not progress), offset):
            items.append(EvalItem(str(row.get("id", i)), kv_retrieval_prompt(gen, row, budget), [str(row["value"])]))
        return fmt, items
    ds = load_nq_open(path)
    top = passage_source(ds, path, retrieved, progress)
    for ex in tqdm(ds.examples[offset:][:limit], desc="retrieval", disable=not progress):
        new_tokens = max_new_tokens or DEFAULT_NEW_TOKENS[fmt]
        p, _ = gen.fit_prompt(ex.question, top(ex, k), new_tokens, budget + new_tokens)  # the lowest ranked go first
        items.append(EvalItem(ex.id, p, ex.answers))
    return fmt, items


def score_answer(fmt: str, text: str, answers: list[str]) -> float:
    """1.0 if ``text`` answers correctly: the value string appears (``kv_retrieval``), or NQ-open accuracy
    (``nq``)."""
    if format_name(fmt) == "kv_retrieval":
        return float(any(a in text for a in answers))
    return metrics.accuracy(text, answers)


def run_items(
    gen: Generator,
    fmt: str,
    items: list[EvalItem],
    compressor: str = "none",
    ratio: float = 0.0,
    max_new_tokens: int | None = None,
    query_aware: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    **compressor_kwargs: Any,
) -> dict[str, Any]:
    """Generate for every item under ``compressor`` (a name, or ``"none"``) at ``ratio``; aggregate.

    ``batch_size > 1`` decodes that many items together (``Generator.generate_batch``; each is still prefilled
    and compressed on its own): the same greedy answers, faster on a GPU. ``decode_tok_s`` is then per
    sequence while sharing a batch."""
    from compress.kv import get_compressor

    if not items:
        raise ConfigError("no items to evaluate")
    comp = None if compressor == "none" else get_compressor(compressor, ratio=ratio, **compressor_kwargs)
    if comp is None and not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise ConfigError(f"ratio must be a fraction removed in [0, 1), got {ratio!r}")
    _check_batch_size(batch_size)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens or DEFAULT_NEW_TOKENS[fmt])
    acc, rows = [], []
    kv_b = kv_full = 0
    prefill = decode = 0.0
    new_tok = prompt_tok = 0
    masks_only = False
    bar = tqdm(total=len(items), desc=f"kv {compressor} {ratio}", disable=not progress)
    for it, g in zip(items, _generations(gen, items, cfg, comp, query_aware, batch_size, bar)):
        acc.append(score_answer(fmt, g.text, it.answers))
        kv_b += g.stats["kv_bytes"]
        kv_full += g.stats["kv_bytes_full"]
        masks_only = masks_only or bool(g.stats["masks_only"])
        prefill += g.prefill_s
        decode += g.decode_s
        new_tok += len(g.token_ids)
        prompt_tok += g.prompt_tokens
        rows.append({"id": it.id, "prediction": g.text, "answers": it.answers, "accuracy": acc[-1]})
    bar.close()
    n = len(items)
    a, ci = mean_ci(acc)
    return {
        "format": fmt,
        "compressor": compressor if comp is None else comp.label,
        "ratio": float(ratio) if comp is not None else 0.0,
        "query_aware": query_aware,
        "model": gen.model_name,
        "accuracy": a,
        "accuracy_ci95": ci,
        "kv_bytes": kv_b / n,
        "kv_bytes_full": kv_full / n,
        "masks_only": masks_only,
        "prefill_s": prefill / n,
        "decode_tok_s": new_tok / decode if decode > 0 else 0.0,
        "mean_prompt_tokens": prompt_tok / n,
        "batch_size": batch_size,
        "n": n,
        "predictions": rows,
    }


def _generations(
    gen: Generator,
    items: list[EvalItem],
    cfg: GenerationConfig,
    comp: Any,
    query_aware: bool,
    batch_size: int,
    bar: Any,
) -> Iterator[Generation]:
    """The items' generations in order, ``batch_size`` at a time."""
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        if batch_size == 1:
            out = [gen.generate(chunk[0].prompt, config=cfg, compressor=comp, query_aware=query_aware)]
        else:
            out = gen.generate_batch([it.prompt for it in chunk], config=cfg, compressor=comp, query_aware=query_aware)
        bar.update(len(chunk))
        yield from out


def dtype_name(gen: Generator) -> str:
    """The loaded generator's dtype as ``eval kv`` records it (``"float32"``, ``"bfloat16"``, ...)."""
    return str(gen.model.dtype).removeprefix("torch.")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")


@dataclass
class KVSuite:
    """Settings of the KV-cache compression suite, shared by one run (:meth:`run`) and a matrix (:meth:`matrix`).

    Parameters
    ----------
    model : str
        The generator: a registered name, a Hugging Face folder or a ``.gguf`` path.
    device : str, optional
        Where it runs (default: CUDA when available).
    dtype : str, optional
        The generator's dtype, ``"float32"``, ``"bfloat16"`` or ``"float16"`` (default: float32 on CPU, bfloat16 on
        CUDA); a run records the one it ran in (``dtype``), and matrices of different dtypes do not merge.
    limit : int, optional
        Items evaluated (default: every item after ``offset``).
    offset : int
        Items skipped first (a development slice apart from the questions a headline is measured on).
    k : int
        Passages retrieved per NQ-open question.
    max_tokens : int, optional
        Prompt + answer token limit (default: the model's window); key-value records are cut to fit.
    max_new_tokens : int, optional
        Greedy answer length (default: 32 for NQ-open, 64 for key-value retrieval).
    query_aware : bool
        Compress after the question is read (default: before, so one cache could serve several questions).
    batch_size : int
        Items decoded together (``Generator.generate_batch``): the same greedy answers, faster on a GPU.
    retrieved : str or Path, optional
        A ``ragcore eval retrieval --dump-retrieved`` file: the top ``k`` come from it (no embedder).
    progress : bool
        Show progress bars.

    Raises
    ------
    ConfigError
        ``batch_size`` is not a positive integer (the other sizes are checked when the items are loaded).
    """

    model: str = "smollm2-135m"
    device: str | None = None
    limit: int | None = None
    offset: int = 0
    k: int = 5
    max_tokens: int | None = None
    max_new_tokens: int | None = None
    query_aware: bool = False
    batch_size: int = 1
    retrieved: str | Path | None = None
    progress: bool = True
    dtype: str | None = None

    def __post_init__(self) -> None:
        _check_batch_size(self.batch_size)

    def _load(self, data: str | Path | None) -> tuple[Generator, str, list[EvalItem]]:
        gen = Generator(self.model, device=self.device, dtype=self.dtype)
        fmt, items = load_items(
            gen,
            data,
            self.k,
            self.limit,
            self.max_tokens,
            self.max_new_tokens,
            self.progress,
            self.retrieved,
            self.offset,
        )
        return gen, fmt, items

    def _run(self, gen: Generator, fmt: str, items: list[EvalItem], compressor: str, ratio: float) -> dict[str, Any]:
        return run_items(
            gen, fmt, items, compressor, ratio, self.max_new_tokens, self.query_aware, self.progress, self.batch_size
        )

    def run(self, data: str | Path | None = None, compressor: str = "none", ratio: float = 0.5) -> dict[str, Any]:
        """One run: one compressor at one ratio over an NQ-open or key-value retrieval file.

        Parameters
        ----------
        data : str or Path, optional
            NQ-open or key-value retrieval JSON lines (default: the bundled NQ-open).
        compressor : str
            A spec of ``compress.kv.get_compressor`` (``"chunk(chunk_size=5):snapkv"``), or ``"none"``.
        ratio : float
            Fraction of the context's KV cache removed, in [0, 1).

        Returns
        -------
        dict
            The run's JSON (its keys are a stable interface): ``format``, ``compressor`` (its label), ``ratio``,
            ``accuracy`` and ``accuracy_ci95``, ``kv_bytes`` and ``kv_bytes_full`` (mean bytes per item),
            ``prefill_s``, ``decode_tok_s``, ``n``, ``predictions`` (per item) and the settings (``data``,
            ``offset``, ``k`` among them, so that single runs merge into a matrix: :func:`merge_matrices`).

        Raises
        ------
        ConfigError
            An unknown compressor or a ratio outside [0, 1) (before the model loads), a bad size or an unknown
            data format.
        """
        if compressor != "none":  # fail on a bad name or ratio before loading anything
            from compress.kv import get_compressor

            get_compressor(compressor, ratio=ratio)
        gen, fmt, items = self._load(data)
        res = self._run(gen, fmt, items, compressor, ratio)
        return {**res, **self._settings(data, gen)}

    def _settings(self, data: str | Path | None, gen: Generator) -> dict[str, Any]:
        """What a run's answers depend on besides the compressor: a matrix merges only runs that agree on them."""
        return {
            "data": str(data or NQ_OPEN),
            "offset": self.offset,
            "k": self.k,
            "max_tokens": self.max_tokens,
            "max_new_tokens": self.max_new_tokens,
            "dtype": dtype_name(gen),
        }

    def matrix(
        self,
        data: str | Path | None,
        compressors: Sequence[str],
        ratios: Sequence[float] = MATRIX_RATIOS,
        baseline: bool = True,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Every compressor at every ratio over prompts built once, after one full-cache run.

        Ratio 0 removes nothing: a compressor's ratio-0 run is a copy of the full-cache run (marked
        ``"shared_baseline": true``), so every compressor's curve starts at the same point.

        Parameters
        ----------
        data : str or Path, optional
            As for :meth:`run`.
        compressors : sequence of str
            Compressor specs (not ``"none"``: the full cache is the matrix's baseline).
        ratios : sequence of float
            Fractions removed, each in [0, 1).
        baseline : bool
            Run the full cache; ``False`` leaves it to another process on the same items (then ratio 0 is refused).
        checkpoint : callable, optional
            Called with the matrix so far after the baseline and after each run (a stopped process keeps them).

        Returns
        -------
        dict
            ``data``, ``format``, ``model``, ``n``, ``offset``, ``query_aware``, ``ratios``, ``compressors``, ``k``,
            ``batch_size``, ``seconds`` and ``runs``: the full-cache run first, then one :meth:`run` result per
            compressor and ratio, in that order.

        Raises
        ------
        ConfigError
            No compressor, ``"none"`` among them, an unknown one, a ratio outside [0, 1), or ratio 0 without the
            baseline; raised before the model loads.
        """
        from compress.kv import get_compressor

        if not compressors:
            raise ConfigError("a matrix needs at least one compressor")
        if "none" in compressors:
            raise ConfigError("'none' is the matrix's full-cache baseline; name only compressors")
        if not baseline and 0 in ratios:
            raise ConfigError("ratio 0 is the full-cache baseline; it cannot be run with baseline=False")
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise ConfigError(f"ratios must be in [0, 1), got {r!r}")
        labels = [get_compressor(name, ratio=0.5).label for name in compressors]  # a bad name fails before loading
        t0 = time.perf_counter()
        gen, fmt, items = self._load(data)
        logger.info("%d %s items ready in %.1fs", len(items), fmt, time.perf_counter() - t0)
        runs: list[dict[str, Any]] = []

        def result() -> dict[str, Any]:
            return {
                **self._settings(data, gen),
                "format": fmt,
                "model": self.model,
                "n": len(items),
                "query_aware": self.query_aware,
                "ratios": list(ratios),
                "compressors": list(compressors),
                "batch_size": self.batch_size,
                "seconds": time.perf_counter() - t0,
                "runs": runs,
            }

        full = None
        if baseline:
            full = self._run(gen, fmt, items, "none", 0.0)
            runs.append(full)
            if checkpoint:
                checkpoint(result())
        for name, label in zip(compressors, labels):
            for r in ratios:
                if r == 0:
                    runs.append({**full, "compressor": label, "shared_baseline": True})
                    continue
                res = self._run(gen, fmt, items, name, r)
                logger.info("%s ratio %.2f: accuracy %.3f, kv %.0f / %.0f bytes", name, r, res["accuracy"],
                            res["kv_bytes"], res["kv_bytes_full"])  # fmt: skip
                runs.append(res)
                if checkpoint:
                    checkpoint(result())
        return result()


def settings_differ(d: dict[str, Any], ref: dict[str, Any], keys: Sequence[str]) -> str:
    """The ``keys`` that ``d`` and ``ref`` both recorded with different values, as ``"k=v (not w), ..."`` (empty
    when they agree; one data file named two ways, relative and absolute, is the same)."""

    def same(a: Any, b: Any, k: str) -> bool:
        return str(Path(a).resolve()) == str(Path(b).resolve()) if k == "data" and a and b else a == b

    diff = [k for k in keys if k in d and k in ref and not same(d[k], ref[k], k)]
    return ", ".join(f"{k}={d[k]!r} (not {ref[k]!r})" for k in diff)


def merge_matrices(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One matrix from several of the same data, model, items and mode (e.g. compressors split over processes).

    The full-cache run of the first file that has one is kept, the others' are dropped; a compressor and ratio
    run again in a later file (a rerun, a fill) keeps its place and takes the later run. Files of either format
    name (``"kv"``, ``"kv_retrieval"``) merge. A file of one run (``eval kv`` with one compressor, or ``none``
    for the full cache) joins as a matrix of that run; every run must hold predictions for the same question ids.

    Raises
    ------
    ConfigError
        No file, files of different matrices or questions, or no full-cache run in any.
    """
    if not paths:
        raise ConfigError("merging needs at least one JSON file")
    if len(set(map(str, paths))) < len(paths):
        raise ConfigError(f"a file is given twice: {[str(p) for p in paths]}")
    parts = []
    for f in paths:
        try:
            d = read_json(f)
        except (OSError, ValueError) as e:  # missing, unreadable, not JSON (json.JSONDecodeError is a ValueError)
            raise ConfigError(f"{str(f)!r} cannot be read as an eval kv result: {e}") from e
        runs = d.get("runs", [d]) if isinstance(d, dict) else None
        if not runs or not all(isinstance(r, dict) and {"compressor", "ratio", "predictions"} <= set(r) for r in runs):
            raise ConfigError(f"{str(f)!r} is not an `eval kv` run or matrix (no compressor runs with predictions)")
        if not all(isinstance(p, dict) and "id" in p for r in runs for p in r["predictions"]) or "format" not in d:
            raise ConfigError(f"{str(f)!r} is not an `eval kv` run or matrix (predictions without ids, or no format)")
        parts.append(d)
    key = ("data", "format", "model", "n", "offset", "query_aware", "k", "max_tokens", "max_new_tokens", "dtype")
    for i, d in enumerate(parts):
        if "runs" not in d:  # one run (e.g. the full cache alone): its settings, and itself as the only run
            parts[i] = d = {**{k: d[k] for k in key if k in d}, "runs": [d], "complete": True}
        else:
            d.setdefault("offset", 0)  # matrices from before offsets existed start at the first item
        d["format"] = format_name(d["format"])

    for f, d in zip(paths, parts):  # settings a file did not record (written before it did) are not compared
        if got := settings_differ(d, parts[0], key):
            raise ConfigError(f"{str(f)!r} is not the same matrix as {str(paths[0])!r}: {got}")
    ids = [[[p["id"] for p in r.get("predictions", [])] for r in d["runs"]] for d in parts]
    first = next((x for run_ids in ids for x in run_ids if x), None)
    for f, run_ids in zip(paths, ids):
        if any(x and x != first for x in run_ids):
            raise ConfigError(f"{str(f)!r} holds other questions than {str(paths[0])!r} (prediction ids differ)")
    for k in key:  # settings a single run did not record, from a file that did
        parts[0].setdefault(k, next((d[k] for d in parts if d.get(k) is not None), None))
    full = [[r for r in d["runs"] if r["compressor"] == "none"] for d in parts]
    runs = next((f for f in full if f), None)
    if runs is None:
        shown = [str(p) for p in paths]
        raise ConfigError(f"no full-cache ('none') run in any of {shown}: run one matrix with its baseline")
    rows: dict[tuple[str, float], dict[str, Any]] = {}  # a later file's run of the same cell replaces an earlier one
    for d in parts:
        rows.update({(r["compressor"], r["ratio"]): r for r in d["runs"] if r["compressor"] != "none"})
    runs += list(rows.values())
    return {
        **parts[0],
        "runs": runs,
        "compressors": list(dict.fromkeys(r["compressor"] for r in runs if r["compressor"] != "none")),
        "ratios": sorted({r["ratio"] for r in runs}),
        "merged_from": [str(p) for p in paths],
        "complete": all(d.get("complete", False) for d in parts),
    }
