"""Command line: ``ragcore index | sources | search | ask | serve | calibrate | eval``.

Exit codes: 0 success; 1 a user error (bad value, missing or damaged index, unreadable input; with
``index --strict`` also: some files were skipped), printed as one line ``ragcore: error: ...``; 2 a usage error
(unknown option, missing argument; argparse's message); 3 an internal error (a bug: one line, the traceback with
``-v``); 130 interrupted (Ctrl-C; nothing half-written: an index stays at its previous version).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from ragcore.errors import ConfigError, IndexCorruptError, IndexMismatchError, RagcoreError

logger = logging.getLogger("ragcore")

DEFAULT_INDEX = os.environ.get("RAGCORE_INDEX", ".ragcore/index")
EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Library errors name parameters; this maps them to the flag a user typed (per command where they differ).
FLAGS = {
    "path": "--index",
    "version": "--index-version",
    "factory": "--faiss",
    "embedder": "--embedder",
    "chunking": "--chunk-tokens/--overlap/--max-chars",
    "chunk_tokens": "--chunk-tokens",
    "overlap": "--overlap",
    "max_chars": "--max-chars",
    "lock_timeout": "--lock-timeout",
    "mode": "--mode",
    "k": "-k",
    "min_score": "--min-score",
    "device": "--device",
    "dtype": "--dtype",
    "model": "--model",
    "out": "--out",
    "context_cache": "--context-cache",
    "reuse": "--reuse",
    "rows_per_context": "--rows-per-context",
    "offset": "--offset",
    "dump": "--dump-retrieved",
    "limit": "--limit",
    "max_tokens": "--max-tokens",
    "ratio": "--ratio",
    "compressor": "--compressor",
    "batch_size": "--batch-size",
    "config": "--config",
    "generator": "--model",
    "max_new_tokens": "--max-new-tokens",
    "method": "--method",
    "data": "--data",
    "order": "--order",
    "port": "--port",
    "tokens": "--tokens",
    "top_k": "--top-k",
    "pool": "--pool",
    "shuffles": "--shuffles",
    "second_round": "--second-round",
}
COMMAND_FLAGS = {"index": {"model": "--embedder"}}


def _progress(a: argparse.Namespace) -> bool:
    """Progress bars only on a terminal and without --quiet (never mixed into piped output or error lines)."""
    return not getattr(a, "quiet", False) and sys.stderr.isatty()


def _close_bars() -> None:
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _index_hint(e: RagcoreError, a: argparse.Namespace) -> str | None:
    """Command-specific advice for a damaged index: only commands that take --index-version are told to use it."""
    if not isinstance(e, IndexCorruptError):
        return e.hint
    from retrieval import store

    if not hasattr(a, "index"):
        return e.hint
    bad = getattr(a, "index_version", None)
    if bad is None:
        try:
            bad = store.current_version(a.index)
        except RagcoreError:
            bad = None
    ok = [v for v in store.versions(a.index) if v != bad]
    if not ok:
        return "index into a new --index folder"
    if hasattr(a, "index_version"):
        return f"an older complete version may still load: --index-version {ok[-1]}"
    return (
        f"`ragcore search --index-version {ok[-1]}` may still read an older version; "
        "to write again, index into a new --index folder"
    )


def error_message(e: BaseException, a: argparse.Namespace | None) -> str:
    """The one line a user sees for an error: the flag at fault (mapped from the parameter), the message, a hint."""
    msg = str(e)
    if isinstance(e, RagcoreError):
        cmd = getattr(a, "command", None)
        flag = COMMAND_FLAGS.get(cmd, {}).get(e.param) or FLAGS.get(e.param or "")
        if isinstance(e, IndexMismatchError) and e.param == "embedder" and cmd != "index":
            flag = None
        hint = _index_hint(e, a) if a is not None else e.hint
        if flag and not msg.startswith(flag):  # a message that names its flag first is not prefixed again
            msg = f"{flag}: {msg}"
        if hint:
            msg += f"; hint: {hint}"
    elif isinstance(e, OSError) and e.filename is not None:
        msg = f"{e.strerror or e}: {e.filename!r}"
    return f"ragcore: error: {msg}"


def _cmd_index(a: argparse.Namespace) -> int:
    from retrieval.indexer import sync

    rep = sync(
        a.index,
        a.paths,
        embedder=a.embedder,
        factory=a.faiss,
        chunk_tokens=a.chunk_tokens,
        overlap=a.overlap,
        max_chars=a.max_chars,
        lock_timeout=a.lock_timeout,
        progress=_progress(a),
        device=a.device,
    )
    failed = bool(a.strict and rep.skipped)
    if a.json:
        print(json.dumps({**rep.to_dict(), "strict_failed": failed}, indent=2, ensure_ascii=False))
        return EXIT_USER if failed else EXIT_OK
    c = rep.counts()
    files = c["new"] + c["changed"] + c["unchanged"]
    where = f"{rep.index} -> {rep.version}" if rep.written else f"nothing changed; {rep.index} stays at {rep.version}"
    print(
        f"indexed {files} files: {c['new']} new, {c['changed']} changed, {c['unchanged']} unchanged, "
        f"{c['removed']} removed; {rep.chunks_added} new chunks, {rep.chunks_total} in all; {where}"
    )
    if rep.truncated:
        print(f"warning: {len(rep.truncated)} chunks are longer than the embedder reads (their tail is not embedded):")
        for t in rep.truncated[:10]:
            print(f"  {t['source_id']}:{t['start']}-{t['end']} ({t['tokens']} tokens)")
    if rep.skipped:
        print(f"skipped {len(rep.skipped)} paths:", file=sys.stderr if failed else sys.stdout)
        for sk in rep.skipped:
            print(f"  {sk.path}: {sk.reason}", file=sys.stderr if failed else sys.stdout)
    if failed:
        print(f"ragcore: error: {len(rep.skipped)} paths were skipped (--strict)", file=sys.stderr)
        return EXIT_USER
    return EXIT_OK


def _cmd_sources(a: argparse.Namespace) -> int:
    from retrieval.hybrid import HybridRetriever
    from retrieval.indexer import remove_sources

    if a.action == "remove":
        version = remove_sources(a.index, a.source_ids, a.lock_timeout)
        print(f"removed {len(a.source_ids)} sources; {a.index} -> {version}")
        return EXIT_OK
    r = HybridRetriever.load(a.index, version=a.index_version)
    if a.json:
        print(json.dumps(r.sources, indent=2, ensure_ascii=False, sort_keys=True))
        return EXIT_OK
    for sid, info in sorted(r.sources.items()):
        sha = (info.get("sha256") or "unknown")[:12]
        print(f"{sid}\t{info.get('chunks', 0)} chunks\t{info.get('type', '?')}\tsha256 {sha}")
    print(f"{len(r.sources)} sources, {len(r)} chunks", file=sys.stderr)
    return EXIT_OK


def _cmd_search(a: argparse.Namespace) -> int:
    from retrieval.hybrid import HybridRetriever

    r = HybridRetriever.load(a.index, version=a.index_version)
    res = r.search(a.question, a.k, a.mode, min_score=a.min_score)
    if a.json:
        print(json.dumps([x.to_dict() for x in res], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not res:
        print(f"no passage has a dense cosine of at least --min-score {a.min_score}", file=sys.stderr)
    for x in res:
        snippet = " ".join(x.chunk.text.split())[:160]
        print(f"{x.rank:>2}. [{x.chunk.source_id}:{x.chunk.start}-{x.chunk.end}] {format_scores(x.scores, r.fusion)}")
        print(f"    {snippet}")
    return EXIT_OK


def format_scores(scores: dict[str, float], fusion: str = "weighted") -> str:
    """``hybrid=0.712 (bm25=3.104, cosine=0.688)``: the fused score first, labelled as ranks under RRF, then the
    raw scores it came from (BM25 unbounded, 0 = no query term; cosine in [-1, 1])."""
    parts = []
    if "hybrid" in scores:
        parts.append(f"{'rrf' if fusion == 'rrf' else 'hybrid'}={scores['hybrid']:.3f}")
    raw = [f"bm25={scores['bm25']:.3f}"] if "bm25" in scores else []
    raw += [f"cosine={scores['dense']:.3f}"] if "dense" in scores else []
    if parts and raw:
        return f"{parts[0]} ({', '.join(raw)})"
    return " ".join(parts + raw)


def _cmd_ask(a: argparse.Namespace) -> int:
    from ragcore.context_cache import context_compressor
    from ragcore.generator import GenerationConfig, Generator
    from ragcore.pipeline import Pipeline
    from retrieval.hybrid import HybridRetriever

    if a.config is not None:
        p, comp = Pipeline.from_config(config_from_args(a)), None
    else:
        cfg = GenerationConfig(max_new_tokens=a.max_new_tokens)
        if a.ratio is not None and a.compressor is None and not a.context_cache:
            raise ConfigError(
                f"--ratio {a.ratio} is the KV compressor's and needs --compressor NAME; a context compressor takes "
                "its own in its spec (e.g. --compress-context 'crag(ratio=0.5)')",
                param="ratio",
            )
        # a ratio or budget in the spec is used as given (the registry refuses one given both ways); neither: 0.5.
        # Built here also for --context-cache (which builds its own later), so a bad spec fails before any loading
        comp = None
        if a.compressor not in (None, "none"):
            for flag, ratio in (("compressor", None), ("ratio", a.ratio)):  # the spec alone, then with --ratio
                try:
                    comp = context_compressor(a.compressor, ratio)
                except ConfigError as e:
                    e.param = flag
                    raise
        comp = None if a.context_cache else comp
        retriever = HybridRetriever.load(a.index, version=a.index_version, min_score=a.min_score)
        p = Pipeline(
            retriever,
            Generator(a.model, a.device),
            a.k,
            cfg,
            compressor=comp,
            query_aware=a.query_aware is not False,
            reranker=a.rerank,
            context_compressor=a.compress_context,
            **_attribution_args(a),
        )
    ans = _ask_context(p, a) if a.context_cache else p.ask(a.question)
    if a.json:
        print(json.dumps(ans.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if ans.sentences or ans.flags:
        print_traced(ans)
        return 0
    print(f"Q: {ans.question}\nA: {ans.text}\n\nSources:")
    for c in ans.citations:
        snippet = " ".join(c.text.split())[:120]
        score = "" if a.context_cache else f" (score {c.score:.3f})"  # a saved context keeps no retrieval scores
        print(f"  [{c.number}] {c.source_id}:{c.start}-{c.end}{score} {snippet}")
    if comp is not None or a.context_cache:
        kv = ans.kv
        mode = "question-agnostic" if a.context_cache or a.query_aware is False else "query-aware"
        ratio = "" if a.context_cache or comp is None else f", ratio {comp.ratio}"
        print(
            f"\nKV cache: {kv['kv_bytes'] / 2**20:.2f} of {kv['kv_bytes_full'] / 2**20:.2f} MiB held ({kv['compressor']}"
            f"{ratio}){'; padded slots masked' if kv.get('masks_only') else ''}; compressed {mode}"
        )
        if "context_cache" in kv:
            cc = kv["context_cache"]
            print(f"Context cache: {cc['state']} {cc['folder']} ({cc['context_tokens']} context tokens)")
    return 0


# flags of `ask` and `serve` that override a --config file's key when given (not left at their default)
CONFIG_FLAGS = {
    "index": "index",
    "k": "k",
    "model": "generator",
    "device": "device",
    "max_new_tokens": "max_new_tokens",
}


def config_from_args(a: argparse.Namespace):  # noqa: ANN201 - ragcore.config.PipelineConfig (imported lazily)
    """The ``--config`` file, environment variables, and the pipeline flags given on the command line (those
    that differ from their defaults), in rising priority."""
    from ragcore.config import PipelineConfig

    defaults = build_parser().parse_args([a.command, *(["q"] if a.command == "ask" else [])])
    given = {
        key: getattr(a, flag)
        for flag, key in CONFIG_FLAGS.items()
        if hasattr(a, flag) and getattr(a, flag) != getattr(defaults, flag, None)
    }
    try:
        return PipelineConfig.load(a.config, **given)
    except RagcoreError as e:
        if e.param not in given:  # the bad value came from the file or the environment, not from a flag
            e.param = "config" if a.config is not None else None
        raise


def _cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from ragcore.errors import ConfigError
    from serve.app import create_app

    if not 0 < a.port < 65536:  # checked before anything loads (0 would pick a port nobody is told about)
        raise ConfigError(f"port must be in 1..65535, got {a.port!r}", param="port")
    app = create_app(config_from_args(a))
    print(f"ragcore serve: http://{a.host}:{a.port} (the web page at /, the API under /v1)", file=sys.stderr)
    logging.getLogger("serve.access").setLevel(logging.INFO)
    uvicorn.run(app, host=a.host, port=a.port, log_level="info" if a.verbose else "warning", access_log=False)
    return EXIT_OK


def _ask_context(p: Any, a: argparse.Namespace) -> Any:
    """``ask --context-cache DIR``: answer from the context saved in DIR, or compress and save one there first."""
    from ragcore.context_cache import MANIFEST, CompressedContext, check_target, compressor_label, context_compressor
    from ragcore.errors import ContextCacheError

    if a.query_aware:  # given (its default is None): a saved context is compressed before any question
        raise ConfigError(
            "--query-aware does not apply to --context-cache (compressed question-agnostic)", param="query_aware"
        )
    given = [f for f, v in (("--tracer", a.tracer), ("--detector", a.detector), ("--defend", a.defend)) if v]
    if given:  # the attribution reads the full prompt's attention, which a saved compressed context no longer holds
        raise ConfigError(f"{', '.join(given)} do not apply to --context-cache", param="context_cache")
    folder = Path(a.context_cache)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is a file, not a folder", param="context_cache")
    if (folder / MANIFEST).exists() or (folder.exists() and any(folder.iterdir())):
        ctx = CompressedContext.load(folder, p.generator)  # refuses a folder that holds something else
        if a.compressor is not None or a.ratio is not None:  # flags that ask for another context are refused
            want = compressor_label(context_compressor(a.compressor, a.ratio))
            if want != ctx.compressor:
                raise ConfigError(
                    f"{str(folder)!r} holds a context compressed with {ctx.compressor!r}, not {want!r} "
                    "(--compressor, --ratio): give another folder, or leave those flags out to reuse it",
                    param="context_cache",
                )
        state = "reused"
    else:
        try:
            check_target(folder)  # before the compression's work, not after it
        except ContextCacheError as e:
            raise ConfigError(str(e), param="context_cache") from None
        ctx = p.compress_context(a.question, a.compressor, a.ratio)
        ctx.save(folder)
        state = "written"
    ans = p.ask_context(ctx, a.question)
    ans.kv["context_cache"] = {"folder": str(folder), "state": state, "context_tokens": ctx.context_tokens}
    return ans


def _attribution_args(a: argparse.Namespace) -> dict:
    """Pipeline arguments of ``ask --tracer/--detector/--defend``."""
    tracer = getattr(a, "tracer", None)
    return {
        "tracer": True if tracer == "interactive" else tracer,
        "detector": getattr(a, "detector", None),
        "defend": bool(getattr(a, "defend", False)),
    }


def print_traced(ans: object) -> None:
    """A traced answer: each sentence with its [n] markers and the source spans it was traced to, then the
    flagged segments."""
    print(f"Q: {ans.question}\nA: {ans.render()}\n")
    for s in ans.sentences:
        print(f"  {s.text!r}")
        for c in s.citations:
            snippet = " ".join(c.text.split())[:120]
            print(f"    [{c.number}] {c.source_id}:{c.start}-{c.end} (score {c.score:.2f}) {snippet}")
        if not s.citations:
            print("    (no passage reaches the confidence threshold)")
    if ans.flags:
        print("\nFlagged:")
        for f in ans.flags:  # a removed passage's number is of the first prompt; the citations number the rest
            where = f"was [{f.number}], removed and answered again" if f.removed else f"[{f.number}], kept"
            snippet = " ".join(f.text.split())[:120]
            print(f"  {f.source_id}:{f.start}-{f.end} {f.reason} ({where}): {snippet}")


def _cmd_eval(a: argparse.Namespace) -> int:
    from eval import runner
    from eval.report import check_out, finite, write_json

    if a.no_generate and a.suite != "crag":
        raise ConfigError(f"--no-generate applies to eval crag only, not {a.suite}", param="no_generate")
    if a.no_generate and a.max_new_tokens is not None:
        raise ConfigError(
            f"--max-new-tokens {a.max_new_tokens} has nothing to limit with --no-generate (no answers)",
            param="max_new_tokens",
        )
    if a.dtype and a.suite != "kv":
        raise ConfigError(f"--dtype applies to eval kv only, not {a.suite}", param="dtype")
    if a.out:  # outputs are checked before the work, not after it
        check_out(a.out)
    if a.dump_retrieved:
        check_out(a.dump_retrieved, param="dump")
    if a.suite == "retrieval":
        res = runner.eval_retrieval(a.data, a.limit, progress=_progress(a), dump=a.dump_retrieved)
    elif a.suite == "qa":
        res = runner.eval_qa(
            a.setting,
            a.model,
            a.data,
            a.limit,
            a.device,
            a.max_new_tokens or 32,
            progress=_progress(a),
            retrieved=a.retrieved,
        )
    elif a.suite == "kv":
        res = _eval_kv(a)
    elif a.suite in ("poisoned", "injection", "citations"):
        res = _eval_attribution(a)
    elif a.suite in ("position", "longctx", "crag"):
        from eval import context_suites

        res = context_suites.run_suite(a, progress=_progress(a))
    else:  # pragma: no cover - argparse restricts the choices
        raise RagcoreError(f"unknown eval suite {a.suite!r}")
    if a.out:
        write_json(a.out, res)
    shown = {k: v for k, v in res.items() if k != "predictions"}
    if "runs" in shown:  # a matrix
        shown["runs"] = [{k: v for k, v in r.items() if k != "predictions"} for r in shown["runs"]]
    print(json.dumps(finite(shown), indent=2, allow_nan=False))
    return 0


def _eval_kv_reuse(a: argparse.Namespace) -> dict:
    """``eval kv --reuse Q``: Q questions of each of --limit (default 5) contexts compressed once."""
    from eval.kv_reuse import run_reuse
    from ragcore.errors import ConfigError

    try:
        ratio = None if a.ratio is None else float(a.ratio)
    except ValueError:
        what = "one ratio" if "," in a.ratio else "a ratio as a number"
        raise ConfigError(f"--reuse takes {what}, got {a.ratio!r}", param="ratio") from None
    if a.query_aware:
        raise ConfigError("--reuse compresses each context before any question: --query-aware does not apply",
                          param="query_aware")  # fmt: skip
    return run_reuse(
        a.model, a.data, a.compressor, ratio, a.reuse, 5 if a.limit is None else a.limit, a.offset or 0, a.device,
        a.max_tokens,
        a.max_new_tokens, progress=_progress(a), batch_size=a.batch_size, rows_per_context=a.rows_per_context,
        dtype=a.dtype,
    )  # fmt: skip


def _eval_kv(a: argparse.Namespace) -> dict:
    """One run for one compressor at one ratio; a matrix for several (``--compressor a,b --ratio 0.5,0.75``)."""
    from eval.kv_compression import KVSuite
    from eval.report import write_json
    from ragcore.errors import ConfigError
    from ragcore.registry import split_top

    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}", param="max_new_tokens")
    if a.reuse is not None:
        return _eval_kv_reuse(a)
    if a.rows_per_context != 1:
        raise ConfigError("--rows-per-context goes with --reuse", param="rows_per_context")
    names = [
        x.strip() for x in split_top(a.compressor or "none", ",") if x.strip()
    ]  # commas inside brackets are options
    try:
        ratios = [float(x) for x in (a.ratio or "0.5").split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"ratio takes fractions separated by commas, got {a.ratio!r}", param="ratio") from None
    if not names or not ratios:
        raise ConfigError("compressor and ratio need at least one value each", param="compressor")
    if a.ratio is None:  # the default 0.5 would clash with a ratio or budget written in a spec: say how to give it
        from compress.kv import get_compressor

        for name in names:
            comp = None if name == "none" else get_compressor(name)
            if comp is not None and (comp.ratio or comp.budget is not None):
                raise ConfigError(
                    f"eval kv takes the ratio from --ratio (default 0.5), not from the spec {name!r}: give it as "
                    "--ratio R (a budget in a spec goes with --reuse only)",
                    param="compressor",
                )
    sizes = dict(
        limit=a.limit, k=a.k, max_tokens=a.max_tokens, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size
    )
    if a.offset:
        sizes["offset"] = a.offset
    suite = KVSuite(
        a.model,
        a.device,
        query_aware=a.query_aware,
        retrieved=a.retrieved,
        progress=_progress(a),
        dtype=a.dtype,
        **sizes,
    )
    if len(names) == 1 and len(ratios) == 1:
        return suite.run(a.data, names[0], ratios[0])
    save = (lambda part: write_json(a.out, {**part, "complete": False})) if a.out else None
    return {**suite.matrix(a.data, names, ratios, checkpoint=save), "complete": True}


def _int_list(text: str | None, param: str) -> list[int] | None:
    """``"5,10"`` -> ``[5, 10]``; a value that is not a positive integer is refused by name."""
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ConfigError(f"{param} takes positive integers separated by commas, got {text!r}", param=param)
    return out


def _eval_attribution(a: argparse.Namespace) -> dict:
    """``eval poisoned|injection|citations`` (eval/attribution.py)."""
    from eval import attribution
    from ragcore.models import DEFAULT_GENERATOR

    common = dict(
        model=a.model or DEFAULT_GENERATOR,
        limit=a.limit,
        device=a.device,
        seed=a.seed,
        max_new_tokens=a.max_new_tokens or 32,
    )
    if a.suite == "poisoned":
        return attribution.eval_poisoned(
            a.data,
            a.method or "attntrace",
            offset=a.offset or 0,
            shuffles=a.shuffles,
            second_round=_int_list(a.second_round, "second_round") or (),
            **common,
        )
    if a.suite == "injection":
        return attribution.eval_injection(
            a.detector,
            nq=a.data,
            offset=a.offset or 0,
            tracer=a.tracer,
            pool=a.pool,
            top_k=_int_list(a.top_k, "top_k"),
            **common,
        )
    return attribution.eval_citations(a.method or "attntrace", nq=a.data, offset=a.offset or 0, **common)


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from eval.position import calibration_examples
    from ragcore.generator import Generator
    from rerank.attnrank import calibrate, profile_path

    examples = calibration_examples(a.data, a.limit, progress=_progress(a))  # checks --limit before loading a model
    lm = Generator(a.model, a.device)
    prof = calibrate(lm, examples, str(a.data or "bundled"))
    path = prof.save(profile_path(lm))
    if a.out:
        prof.save(a.out)
    ratios = prof.ratios()
    print(f"profile of {prof.model} over {prof.n} questions: {path}")
    print(f"layer {prof.layer} chosen ({prof.rule}); its edge-to-middle ratio {ratios[prof.layer]:.3f}")
    print("slot attention of that layer: " + " ".join(f"{x:.3f}" for x in prof.attention[prof.layer]))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragcore")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"


def _models_help(kind: str, default: str) -> str:
    from ragcore.models import REGISTRY

    names = ", ".join(n for n, s in REGISTRY.items() if s.kind == kind)
    return f"{kind}: a bundled name ({names}), a local Hugging Face folder or .gguf file, or a cached hub id (default {default})"


def build_parser() -> argparse.ArgumentParser:
    from ragcore.models import DEFAULT_EMBEDDER, DEFAULT_GENERATOR
    from retrieval.indexer import DEFAULT_CHUNK_TOKENS, DEFAULT_FACTORY, DEFAULT_OVERLAP_TOKENS
    from retrieval.store import DEFAULT_LOCK_TIMEOUT

    p = argparse.ArgumentParser(
        prog="ragcore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"The default index folder is {DEFAULT_INDEX!r} (relative to the current folder; set $RAGCORE_INDEX "
        "to change it).",
    )
    p.add_argument("--version", action="version", version=f"ragcore {_version()}")

    def common(sp: argparse.ArgumentParser, top: bool = False) -> None:
        # accepted before and after the subcommand; the subcommand's copy must not reset the top-level one
        d = {} if top else {"default": argparse.SUPPRESS}
        sp.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (and show tracebacks)", **d)
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bars", **d)

    common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def index_opts(sp: argparse.ArgumentParser, version: bool = True) -> None:
        sp.add_argument(
            "--index",
            default=DEFAULT_INDEX,
            help=f"index folder (default {DEFAULT_INDEX!r}: $RAGCORE_INDEX if set, else .ragcore/index)",
        )
        if version:
            sp.add_argument("--index-version", default=None, help="load this version (e.g. v000001) instead of CURRENT")

    def model_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=DEFAULT_GENERATOR, help=_models_help("generator", DEFAULT_GENERATOR))
        sp.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")

    def k_opt(sp: argparse.ArgumentParser, default: int, what: str) -> None:
        sp.add_argument("-k", "--k", dest="k", type=int, default=default, help=f"{what} (default {default})")

    def question_cmd(name: str, help: str, k_what: str) -> argparse.ArgumentParser:
        """A command that takes a question against an index: search, ask."""
        sp = sub.add_parser(name, help=help)
        common(sp)
        sp.add_argument("question")
        index_opts(sp)
        k_opt(sp, 5, k_what)
        sp.add_argument("--min-score", type=float, default=None, help="drop passages whose dense cosine is below this")
        return sp

    sp = sub.add_parser(
        "index",
        help="index files and folders: add new files, update changed ones, drop deleted ones",
        description="Sync an index with files: .txt .md .markdown .rst .html .htm .pdf. Re-running on a folder "
        "adds new files, re-indexes changed ones and removes deleted ones; files that cannot be read are listed.",
    )
    common(sp)
    sp.add_argument("paths", nargs="+", metavar="PATH", help="files and folders to index")
    index_opts(sp, version=False)
    sp.add_argument(
        "--embedder",
        default=None,
        help=f"{_models_help('embedder', DEFAULT_EMBEDDER)}; an existing index keeps its own",
    )
    sp.add_argument(
        "--faiss",
        default=None,
        help=f"FAISS index factory: Flat (exact), HNSW32, IVF<n>,Flat (needs >= n chunks) (default {DEFAULT_FACTORY}; "
        "an existing index keeps its own)",
    )
    sp.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help=f"chunk size in the embedder's tokens (default {DEFAULT_CHUNK_TOKENS}; at most what it reads, 254 for minilm)",
    )
    sp.add_argument(
        "--overlap",
        type=int,
        default=None,
        help=f"tokens of whole sentences shared by neighbouring chunks (default {DEFAULT_OVERLAP_TOKENS})",
    )
    sp.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="size chunks in characters instead of tokens; may exceed what the embedder reads (default: off)",
    )
    sp.add_argument("--device", default=None, help="embedder device: cpu, cuda or cuda:N (default: cuda if available)")
    sp.add_argument("--strict", action="store_true", help="exit 1 when any file was skipped (default: report only)")
    sp.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        help=f"seconds to wait for another writer (default {DEFAULT_LOCK_TIMEOUT:g})",
    )
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(fn=_cmd_index)

    sp = sub.add_parser("sources", help="list or remove the sources (files) of an index")
    common(sp)
    ssub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = ssub.add_parser("list", help="one line per source: id, chunks, type, sha256")
    common(sl)
    index_opts(sl)
    sl.add_argument("--json", action="store_true", help="print {source id: info} as JSON")
    sr = ssub.add_parser("remove", help="remove sources (by id, as `sources list` shows them)")
    common(sr)
    sr.add_argument("source_ids", nargs="+", metavar="SOURCE")
    index_opts(sr, version=False)
    sr.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        help=f"seconds to wait for another writer (default {DEFAULT_LOCK_TIMEOUT:g})",
    )
    sp.set_defaults(fn=_cmd_sources)

    sp = question_cmd("search", "retrieve passages for a question", "passages to return")
    sp.add_argument(
        "--mode", default="hybrid", choices=["hybrid", "bm25", "dense"], help="retrieval mode (default hybrid)"
    )
    sp.add_argument("--json", action="store_true", help="print results as JSON")
    sp.set_defaults(fn=_cmd_search)

    sp = question_cmd("ask", "retrieve, then answer with the generator and list the sources", "passages in the prompt")
    model_opt(sp)
    sp.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    sp.add_argument(
        "--compressor",
        default=None,
        help="KV-cache compressor, as for `eval kv` (default none; with --context-cache, compress.kv.DEFAULT_AGNOSTIC)",
    )
    sp.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="with --compressor: fraction of the KV cache removed (default 0.5, or the spec's own ratio)",
    )
    sp.add_argument(
        "--query-aware",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --compressor: compress after reading the question (default); --no-query-aware: the context alone",
    )
    sp.add_argument(
        "--context-cache",
        metavar="DIR",
        default=None,
        help="answer from the compressed context saved in DIR; if DIR holds none, compress the question's passages "
        "question-agnostic (--compressor, default compress.kv.DEFAULT_AGNOSTIC, at --ratio) and save them there",
    )
    sp.add_argument("--rerank", default=None, help="reranker spec: the passages' order, e.g. attnrank, reversed")
    sp.add_argument(
        "--compress-context", default=None, help="context compressor spec: the text read, e.g. 'crag(k=3)', infiniretri"
    )
    sp.add_argument("--json", action="store_true", help="print the answer as JSON")
    sp.add_argument(
        "--config",
        default=None,
        help="a pipeline config (TOML; keys of ragcore.config.PipelineConfig, $RAGCORE_* override it); "
        "--index, -k, --model, --device, --max-new-tokens given here override both",
    )
    sp.add_argument(
        "--tracer",
        nargs="?",
        const="interactive",
        default=None,
        help="cite each answer sentence by tracing it: alone, the one-forward AttnTrace setting; or a spec "
        "(attntrace, attntrace(subsamples=30, keep=0.4), attention, loo, contextcite)",
    )
    sp.add_argument("--detector", default=None, help="flag instructions in the top traced segments: rules or judge")
    sp.add_argument("--defend", action="store_true", help="drop flagged passages and answer again (implies rules)")
    sp.set_defaults(fn=_cmd_ask)

    sp = sub.add_parser("serve", help="run the QA service (FastAPI, uvicorn): /v1/ask, /v1/ask/stream, the web page")
    common(sp)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--config", default=None, help="a pipeline config (TOML), as for `ask --config`")
    sp.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX!r})")
    k_opt(sp, 5, "default passages per question")
    model_opt(sp)
    sp.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens (default 64)")
    sp.set_defaults(fn=_cmd_serve)

    sp = sub.add_parser(
        "calibrate",
        help="measure a generator's positional attention profile (for the attnrank reranker)",
        description="Attention of the question's tokens to each of 10 passage slots, per layer, over the development "
        "slice of NQ-open; stored in the cache directory with the model's digest and prompt format.",
    )
    common(sp)
    model_opt(sp)
    sp.add_argument("--data", default=None, help="NQ-open file (default: the bundled one)")
    sp.add_argument("--limit", type=int, default=200, help="development questions (at most 200; default 200)")
    sp.add_argument("--out", default=None, help="also write the profile to this .json file")
    sp.set_defaults(fn=_cmd_calibrate)

    sp = sub.add_parser("eval", help="offline evaluations")
    common(sp)
    sp.add_argument(
        "suite", choices=["retrieval", "qa", "kv", "poisoned", "injection", "citations", "position", "longctx", "crag"]
    )
    sp.add_argument(
        "--data",
        default=None,
        help="NQ-open file (format of nq_open_oracle_dev.jsonl.gz); kv also takes key-value retrieval files",
    )
    sp.add_argument(
        "--out", default=None, help="write results as JSON (a .json name; the Markdown table goes beside it as .md)"
    )
    sp.add_argument("--limit", type=int, default=None, help="questions to evaluate (default all)")
    sp.add_argument(
        "--setting",
        default="top5",
        choices=["closed", "oracle", "top5", "top10"],
        help="qa: passages given (default top5)",
    )
    model_opt(sp)
    sp.add_argument("--dump-retrieved", default=None, help="retrieval: write each question's hybrid top 20 ids")
    sp.add_argument("--retrieved", default=None, help="qa, kv: take the top k from a --dump-retrieved file")
    sp.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (kv: 64 for key-value files)")
    sp.add_argument(
        "--compressor",
        default=None,
        help="kv: KV-cache compressor: a name, 'wrapper:inner', options as 'chunk(chunk_size=5):snapkv', or none "
        "(the default; with --reuse: compress.kv.DEFAULT_AGNOSTIC, and none reuses the full cache); several, "
        "separated by commas, run a matrix with --ratio (one JSON holding every run)",
    )
    sp.add_argument(
        "--ratio",
        default=None,
        help="kv: fraction of the context's KV cache removed (default 0.5; with --reuse, the spec's own if it sets "
        "one); several: a matrix (0.5,0.75)",
    )
    k_opt(sp, 5, "kv: passages retrieved per NQ question")
    sp.add_argument("--max-tokens", type=int, default=None, help="kv: prompt + answer token limit (cuts records)")
    sp.add_argument("--query-aware", action="store_true", help="kv: compress after reading the question too")
    sp.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="kv: the generator's dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    sp.add_argument(
        "--batch-size", type=int, default=1, help="kv: questions decoded together (the same greedy answers in float32)"
    )
    sp.add_argument(
        "--offset",
        type=int,
        default=None,
        help="kv, poisoned, injection, citations, position, longctx, crag: items skipped first (a development slice)",
    )
    sp.add_argument(
        "--reuse",
        type=int,
        default=None,
        metavar="Q",
        help="kv: ask Q questions of each of --limit (default 5) contexts compressed once, question-agnostic "
        "(--compressor, default compress.kv.DEFAULT_AGNOSTIC), against Q full prefills",
    )
    sp.add_argument(
        "--rows-per-context",
        type=int,
        default=1,
        metavar="N",
        help="kv --reuse on key-value data: the records of N consecutive rows make one context (longer contexts)",
    )
    sp.add_argument(
        "--method",
        default=None,
        help="poisoned, citations: tracers side by side on the same answers (attntrace,contextcite,loo,attention; "
        "default attntrace); longctx: infiniretri (options in brackets), truncate, or a KV compressor (default "
        "infiniretri); crag: the context compressor against plain top k (default crag)",
    )
    sp.add_argument("--detector", default="rules", help="injection: detectors side by side (rules,judge)")
    sp.add_argument("--tracer", default=None, help="injection: the tracer whose top K the detector reads")
    sp.add_argument(
        "--pool",
        default="report",
        choices=["dev", "report", "all"],
        help="injection: which half of the injected strings (dev: for choosing; report: held out; default report)",
    )
    sp.add_argument(
        "--top-k",
        default=None,
        help="injection: traced segments the detectors read, one or several (5,10,20; default: the tracer's K)",
    )
    sp.add_argument("--seed", type=int, default=0, help="poisoned, injection, citations: shuffles and positions")
    sp.add_argument(
        "--shuffles",
        type=int,
        default=1,
        help="poisoned: seeded orders of each target's texts (contexts = targets x shuffles; intervals by target)",
    )
    sp.add_argument(
        "--second-round",
        default=None,
        help="poisoned: a second round of trace-and-remove after the first, taking away K2 more texts; one or "
        "several K2 side by side (1,2,3)",
    )
    sp.add_argument("--order", default="all", help="position: reranker specs separated by commas, or all")
    sp.add_argument("--tokens", type=int, default=8192, help="longctx: input length in tokens (default 8192)")
    sp.add_argument(
        "--no-generate",
        action="store_true",
        help="crag: no answers, only the input tokens and whether a gold answer is still in the passages (for a "
        "cheap development choice)",
    )
    sp.set_defaults(fn=_cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return args.fn(args)
    except KeyboardInterrupt:
        _close_bars()
        print("ragcore: interrupted; nothing was written (an index stays at its previous version)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`ragcore ... | head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush at exit writes nowhere
        return 0
    except (RagcoreError, OSError) as e:
        _close_bars()
        if args.verbose:
            traceback.print_exc()
        print(error_message(e, args), file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # noqa: BLE001 - a bug: one line, and the traceback with -v
        _close_bars()
        if args.verbose:
            traceback.print_exc()
        print(
            f"ragcore: internal error: {type(e).__name__}: {e} (a bug; run again with -v for the traceback "
            "and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
