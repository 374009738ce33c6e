"""Command line: ``ragcore index | search | ask | eval``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ragcore.errors import RagcoreError

logger = logging.getLogger("ragcore")

DEFAULT_INDEX = os.environ.get("RAGCORE_INDEX", ".ragcore/index")


def _cmd_index(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ragcore.chunking import chunk_file, iter_files
    from ragcore.errors import IndexNotFoundError
    from retrieval.hybrid import HybridRetriever

    try:
        r = HybridRetriever.load(a.index, progress=True)
        logger.info("adding to the index at %s (%d chunks)", a.index, len(r))
    except IndexNotFoundError:
        r = HybridRetriever(embedder=a.embedder, factory=a.faiss, progress=True)
    files = list(iter_files(a.paths))
    if not files:
        raise RagcoreError(f"no .txt/.md files found under {a.paths!r}")
    chunks = [c for f in tqdm(files, desc="chunking", unit="file") for c in chunk_file(f, a.max_chars)]
    new = r.add(chunks)
    if new == 0 and len(r) == 0:
        raise RagcoreError(f"the files under {a.paths!r} hold no text to index")
    version = r.save(a.index)
    print(f"indexed {len(files)} files: {new} new chunks, {len(r)} in all; {a.index} -> {version}")
    return 0


def _cmd_search(a: argparse.Namespace) -> int:
    from retrieval.hybrid import HybridRetriever

    r = HybridRetriever.load(a.index, version=a.index_version)
    res = r.search(a.question, a.k, a.mode)
    if a.json:
        print(json.dumps([x.to_dict() for x in res], indent=2, ensure_ascii=False))
        return 0
    for x in res:
        scores = " ".join(f"{k}={v:.3f}" for k, v in x.scores.items())
        snippet = " ".join(x.chunk.text.split())[:160]
        print(f"{x.rank:>2}. [{x.chunk.source_id}:{x.chunk.start}-{x.chunk.end}] {scores}\n    {snippet}")
    return 0


def _cmd_ask(a: argparse.Namespace) -> int:
    from compress.kv import get_compressor
    from ragcore.generator import GenerationConfig, Generator
    from ragcore.pipeline import Pipeline
    from retrieval.hybrid import HybridRetriever

    cfg = GenerationConfig(max_new_tokens=a.max_new_tokens)
    comp = None if a.compressor == "none" else get_compressor(a.compressor, ratio=a.ratio)
    retriever = HybridRetriever.load(a.index, version=a.index_version)
    p = Pipeline(retriever, Generator(a.model, a.device), a.k, cfg, compressor=comp, query_aware=a.query_aware)
    ans = p.ask(a.question)
    if a.json:
        print(json.dumps(ans.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"Q: {ans.question}\nA: {ans.text}\n\nSources:")
    for c in ans.citations:
        snippet = " ".join(c.text.split())[:120]
        print(f"  [{c.number}] {c.source_id}:{c.start}-{c.end} (score {c.score:.3f}) {snippet}")
    if comp is not None:
        kv = ans.kv
        print(
            f"\nKV cache: {kv['kv_bytes'] / 2**20:.2f} of {kv['kv_bytes_full'] / 2**20:.2f} MiB held ({kv['compressor']}, "
            f"ratio {a.ratio}{', padded slots masked' if kv.get('masks_only') else ''})"
        )
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from eval import runner
    from eval.report import write_json

    if a.suite == "retrieval":
        res = runner.eval_retrieval(a.data, a.limit, dump=a.dump_retrieved)
    elif a.suite == "qa":
        res = runner.eval_qa(
            a.setting, a.model, a.data, a.limit, a.device, a.max_new_tokens or 32, retrieved=a.retrieved
        )
    elif a.suite == "kv":
        res = _eval_kv(a)
    else:  # pragma: no cover - argparse restricts the choices
        raise RagcoreError(f"unknown eval suite {a.suite!r}")
    if a.out:
        write_json(a.out, res)
    shown = {k: v for k, v in res.items() if k != "predictions"}
    if "runs" in shown:  # a matrix
        shown["runs"] = [{k: v for k, v in r.items() if k != "predictions"} for r in shown["runs"]]
    print(json.dumps(shown, indent=2))
    return 0


def _eval_kv(a: argparse.Namespace) -> dict:
    """One run for one compressor at one ratio; a matrix for several (``--compressor a,b --ratio 0.5,0.75``)."""
    from compress.kv import split_top
    from eval.kv_compression import KVSuite
    from eval.report import write_json
    from ragcore.errors import ConfigError

    names = [x.strip() for x in split_top(a.compressor, ",") if x.strip()]
    try:
        ratios = [float(x) for x in a.ratio.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ratio takes fractions separated by commas, got {a.ratio!r}") from None
    if not names or not ratios:
        raise ConfigError("--compressor and --ratio need at least one value each")
    sizes = dict(
        limit=a.limit, k=a.k, max_tokens=a.max_tokens, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size
    )
    suite = KVSuite(a.model, a.device, query_aware=a.query_aware, retrieved=a.retrieved, **sizes)
    if len(names) == 1 and len(ratios) == 1:
        return suite.run(a.data, names[0], ratios[0])
    save = (lambda part: write_json(a.out, {**part, "complete": False})) if a.out else None
    return {**suite.matrix(a.data, names, ratios, checkpoint=save), "complete": True}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragcore", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    def index_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--index", default=DEFAULT_INDEX, help=f"index folder (default {DEFAULT_INDEX})")
        sp.add_argument("--index-version", default=None, help="load this version (e.g. v000001) instead of CURRENT")

    sp = sub.add_parser("index", help="index .txt/.md files or folders (adds to an existing index)")
    sp.add_argument("paths", nargs="+")
    sp.add_argument("--index", default=DEFAULT_INDEX)
    sp.add_argument("--embedder", default="minilm")
    sp.add_argument("--faiss", default="Flat", help="FAISS index factory: Flat (exact) or e.g. HNSW32")
    sp.add_argument("--max-chars", type=int, default=800)
    sp.set_defaults(fn=_cmd_index)

    sp = sub.add_parser("search", help="retrieve passages for a question")
    sp.add_argument("question")
    index_opts(sp)
    sp.add_argument("-k", type=int, default=5)
    sp.add_argument("--mode", default="hybrid", choices=["hybrid", "bm25", "dense"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_search)

    sp = sub.add_parser("ask", help="retrieve, then answer with the generator and list the sources")
    sp.add_argument("question")
    index_opts(sp)
    sp.add_argument("-k", type=int, default=5)
    sp.add_argument("--model", default="qwen2.5-0.5b", help="registered name, local folder or hub id")
    sp.add_argument("--device", default=None)
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--compressor", default="none", help="KV-cache compressor, as for `eval kv` (default none)")
    sp.add_argument("--ratio", type=float, default=0.5, help="with --compressor: fraction of the KV cache removed")
    sp.add_argument("--query-aware", action="store_true", help="with --compressor: compress after the question")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_ask)

    sp = sub.add_parser("eval", help="offline evaluations")
    sp.add_argument("suite", choices=["retrieval", "qa", "kv"])
    sp.add_argument(
        "--data",
        default=None,
        help="NQ-open file (format of nq_open_oracle_dev.jsonl.gz); kv also takes key-value retrieval files",
    )
    sp.add_argument("--out", default=None, help="write results as JSON (and a Markdown table beside it)")
    sp.add_argument("--limit", type=int, default=None)
    sp.add_argument("--setting", default="top5", choices=["closed", "oracle", "top5", "top10"])
    sp.add_argument("--model", default="smollm2-135m")
    sp.add_argument("--device", default=None)
    sp.add_argument("--dump-retrieved", default=None, help="retrieval: write each question's hybrid top 20 ids")
    sp.add_argument("--retrieved", default=None, help="qa, kv: take the top k from a --dump-retrieved file")
    sp.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (kv: 64 for key-value files)")
    sp.add_argument(
        "--compressor",
        default="none",
        help="kv: KV-cache compressor: a name, 'wrapper:inner', options as 'chunk(chunk_size=5):snapkv', or none; "
        "several, separated by commas, run a matrix with --ratio (one JSON holding every run)",
    )
    sp.add_argument(
        "--ratio", default="0.5", help="kv: fraction of the context's KV cache removed; several: a matrix (0.5,0.75)"
    )
    sp.add_argument("--k", type=int, default=5, help="kv: passages retrieved per NQ question")
    sp.add_argument("--max-tokens", type=int, default=None, help="kv: prompt + answer token limit (cuts records)")
    sp.add_argument("--query-aware", action="store_true", help="kv: compress after reading the question too")
    sp.add_argument("--batch-size", type=int, default=1, help="kv: questions decoded together (same answers)")
    sp.set_defaults(fn=_cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
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
    except (RagcoreError, FileNotFoundError) as e:
        print(f"ragcore: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
