"""Compress a context once, answer many questions from it, and keep it on disk.

``ctx = generator.prefill_context(passages, "kvzip(ratio=0.5)")`` prefills the prompt's context (instruction and
passages: every token before the question) once under a question-agnostic KV compressor; ``ctx.ask(question)``
then feeds the question and decodes on a view of the compressed cache (a new cache object over the same tensors;
what the answer appends goes to new tensors), so the context never changes and the tenth answer to a question is
the first one. The answer is the one ``Generator.generate(prompt, compressor=..., query_aware=False)`` gives: the
same compressed cache, the question fed at the same absolute positions, the same per-head masks.

On disk (``ctx.save(folder)``) a compressed context is::

    folder/
        kv.safetensors   keys.<layer>, values.<layer> (B, H_kv, S_l, D), mask.<layer> (uneven compressions),
                         context_ids (1, T)
        manifest.json    written last: format, version, model, compressor label, context length, passages,
                         system prompt, report, the bytes and sha256 of kv.safetensors, and ``sha256``: the hash
                         of the manifest's own JSON without that field (sorted keys, compact separators)

written into a temporary folder beside it and renamed into place, under a lock (``.<folder>.lock`` beside it).
``save`` replaces only an empty folder or a saved context; anything else at the path is refused.
``CompressedContext.load`` refuses a folder whose manifest is missing, of another version, changed (its sha256)
or incomplete, whose tensors file has another size or sha256 (truncated or tampered with), or whose model differs
from the generator's, with :class:`ragcore.errors.ContextCacheError`. No pickle: tensors go through safetensors,
the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ragcore import cache as kvcache
from ragcore.errors import ConfigError, ContextCacheError, PromptTooLongError
from ragcore.registry import registry
from ragcore.types import Chunk, ScoredChunk

if TYPE_CHECKING:
    from ragcore.generator import Generation, GenerationConfig, Generator
    from ragcore.prompt import Prompt

logger = logging.getLogger(__name__)
FORMAT, VERSION = "ragcore-context-cache", 2  # 2: the manifest carries its own sha256
TENSORS, MANIFEST = "kv.safetensors", "manifest.json"
PLACEHOLDER = "?"  # the question of the prompt whose context is prefilled (only the tokens before it are used)


@dataclass
class CompressedContext:
    """A prefilled, compressed context that answers any number of questions.

    Parameters
    ----------
    generator:
        The loaded generator whose model made (and reads) the cache.
    passages:
        The passages in the context, in prompt order.
    context_ids:
        (1, T) token ids of the context: the prompt up to where the question starts.
    layers:
        Per layer, the compressed (keys, values), each (1, H_kv, S_l, D) (keys rotated at their positions).
    masks:
        Per layer, the (1, H_kv, S_l) visibility of the slots after an uneven per-head compression (empty when
        every head sees its whole layer).
    compressor:
        The compressor's label with its ratio (``"kvzip(ratio=0.5)"``), or ``"none"``.
    system:
        The system prompt the context was built with (None: the default).
    report:
        The compression's :class:`compress.kv.KVReport` as a dict, and ``prefill_s`` (seconds of prefill plus
        compression).
    """

    generator: Generator
    passages: list[Chunk]
    context_ids: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    compressor: str = "none"
    system: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    _base: Prompt | None = field(default=None, init=False, repr=False, compare=False)  # the context's own prompt

    @property
    def context_tokens(self) -> int:
        return int(self.context_ids.shape[-1])

    @property
    def kv_bytes(self) -> int:
        """Bytes the compressed keys and values hold (padded slots of uneven budgets included)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def prompt(self, question: str, config: GenerationConfig | None = None) -> Prompt:
        """The full prompt for ``question``, checked to start with this context's tokens and to leave room for the
        answer (``config.max_new_tokens``, default ``GenerationConfig()``'s) in the model's window (raises
        ``PromptTooLongError`` otherwise). With the generator's own prompt layout only the question's part is
        tokenised (:func:`ragcore.prompt.extend_prompt`; the context's prompt is built once per object)."""
        from ragcore.generator import GenerationConfig, Generator
        from ragcore.prompt import extend_prompt

        gen = self.generator
        p = None
        if type(gen).prompt is Generator.prompt:  # ragcore's own layout: only the question is tokenised
            if self._base is None:
                self._base = gen.prompt(PLACEHOLDER, self.passages, self.system)
            p = extend_prompt(self._base, question)
        if p is None:
            p = gen.prompt(question, self.passages, self.system)
        new = (config or GenerationConfig()).max_new_tokens
        window = self.generator.context_window
        if len(p) + new > window:
            raise PromptTooLongError(
                f"the question takes {len(p) - self.context_tokens} tokens after the context's {self.context_tokens}; "
                f"{self.generator.model_name!r} reads {window} tokens, {new} of them kept for the answer"
            )
        n = self.context_tokens
        if p.question_start != n or not torch.equal(p.input_ids[:, :n], self.context_ids.to(p.input_ids.device)):
            raise ContextCacheError(
                f"the prompt for {question!r} does not start with the cached context's {n} tokens "
                "(another tokenizer or prompt template made this cache)"
            )
        return p

    def ask(self, question: str, config: GenerationConfig | None = None) -> Generation:
        """Answer ``question`` from the compressed context, leaving the context unchanged. ``Generation.stats``
        gets ``kv_bytes`` (the context's compressed cache), ``kv_bytes_full`` (an uncompressed one of the same
        prompt), ``masks_only`` and ``compressor``."""
        p = self.prompt(question, config)
        dev = self.generator.model.device
        cache = kvcache.new_cache(self.generator.model.config, [(k.to(dev), v.to(dev)) for k, v in self.layers])
        masks = {i: m.to(dev) for i, m in self.masks.items()}
        g = self.generator.decode_on(cache, p, self.context_tokens, config, masks)
        g.stats.update(self._stats(p))
        return g

    def _stats(self, p: Prompt) -> dict[str, Any]:
        """What an answer to prompt ``p`` reports of this context (``Generation.stats``)."""
        return {
            "kv_bytes": self.kv_bytes,
            "kv_bytes_full": kvcache.layers_bytes_per_token(self.layers) * len(p),
            "masks_only": bool(self.report.get("masks_only", False)),
            "compressor": self.compressor,
        }

    def ask_batch(self, questions: Sequence[str], config: GenerationConfig | None = None) -> list[Generation]:
        """Answer several ``questions`` from the compressed context together (:meth:`Generator.decode_shared`): the
        context is copied once into a batch cache, every question is fed in one model call (left-padded, the
        padding hidden), then the answers' decoding steps run once for the whole batch, which is what a step's cost
        on a GPU is bound by for a small model (kernel launches), not the rows. The context is left unchanged.
        Greedy answers equal :meth:`ask`'s in float32; in bfloat16 (the default on CUDA) the batch's attention
        rounds differently and can change a token now and then. ``prefill_s`` is the one feed's time,
        ``decode_s`` the batch's decoding until that row stopped. ``stats`` as in :meth:`ask`, plus
        ``batch_size``."""
        if isinstance(questions, str):
            raise ConfigError(f"ask_batch takes a list of questions, got one string {questions!r}: use ask()")
        if not questions:
            return []
        gen = self.generator
        prompts = [self.prompt(q, config) for q in questions]
        stats = [self._stats(p) for p in prompts]
        return gen.decode_shared(prompts, self.layers, self.masks, self.context_tokens, stats, config)

    # ---- on disk ---------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, lock_timeout: float = 60.0) -> Path:
        """Write the context to ``folder``, atomically: a temporary folder beside it is filled, synced and renamed
        into place, under a lock beside it (``lock_timeout`` seconds at most). ``folder`` may be missing, empty,
        or a saved context (replaced); anything else there is refused with ``ContextCacheError`` and left as it
        is. Returns the folder."""
        from filelock import FileLock, Timeout
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        folder = Path(os.path.abspath(folder))
        check_target(folder)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ContextCacheError(f"cannot make {str(folder.parent)!r} for a saved context: {e}") from None
        tensors = {"context_ids": self.context_ids.cpu().contiguous()}
        for i, (k, v) in enumerate(self.layers):
            tensors[f"keys.{i}"] = k.cpu().contiguous()
            tensors[f"values.{i}"] = v.cpu().contiguous()
        for i, m in self.masks.items():
            tensors[f"mask.{i}"] = m.cpu().contiguous()
        try:
            lock = FileLock(str(folder.with_name(f".{folder.name}.lock")), timeout=lock_timeout)
            lock.acquire()
        except Timeout:
            raise ContextCacheError(
                f"{str(folder)!r} is being written by another process (waited {lock_timeout:g} s)"
            ) from None
        except OSError as e:
            raise ContextCacheError(f"cannot lock {str(folder)!r} for writing: {e}") from None
        try:
            check_target(folder)  # again, under the lock
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            try:
                save_file(tensors, str(tmp / TENSORS))
                _fsync(tmp / TENSORS)
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "model": self.generator.model_name,
                    "compressor": self.compressor,
                    "context_tokens": self.context_tokens,
                    "n_layers": len(self.layers),
                    "system": self.system,
                    "passages": [c.to_dict() for c in self.passages],
                    "report": self.report,
                    "files": {TENSORS: {"bytes": (tmp / TENSORS).stat().st_size, "sha256": _sha256(tmp / TENSORS)}},
                }
                manifest = json.loads(json.dumps(manifest))  # as it reads back (keys as strings, lists)
                manifest["sha256"] = manifest_sha256(manifest)
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
                _fsync(tmp / MANIFEST)
                old = None
                if folder.exists():
                    old = folder.with_name(f".{folder.name}.old.{os.getpid()}")
                    os.replace(folder, old)
                try:
                    os.replace(tmp, folder)
                except BaseException:
                    if old is not None:  # the saved context back in place
                        os.replace(old, folder)
                    raise
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        except (OSError, SafetensorError) as e:  # a full disk, a folder taken away: what was there is left as it was
            raise ContextCacheError(
                f"could not write the context to {str(folder)!r}: {e} (nothing there changed)"
            ) from None
        finally:
            lock.release()
        return folder

    @classmethod
    def load(cls, folder: str | Path, generator: Generator) -> CompressedContext:
        """Read a context that :meth:`save` wrote, for ``generator`` (which must be the model that made it).
        Raises ``ContextCacheError`` when the folder is missing, incomplete, of another version, truncated or
        tampered with, or made by another model."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise ContextCacheError(f"{str(folder)!r} holds no saved context (no {MANIFEST})")
        try:
            m = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ContextCacheError(f"{str(mpath)!r} is not a context manifest: {e}") from None
        if not isinstance(m, dict):
            raise ContextCacheError(f"{str(mpath)!r} is not a context manifest (not a JSON object)")
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise ContextCacheError(
                f"{str(folder)!r} is format {m.get('format')!r} version {m.get('version')!r}; "
                f"this ragcore reads {FORMAT!r} version {VERSION} (compress the context again into a new folder)"
            )
        if m.get("sha256") != manifest_sha256(m):
            raise ContextCacheError(f"{str(mpath)!r} does not match its sha256: the manifest was changed")
        missing = [k for k in MANIFEST_KEYS if k not in m]
        if missing:
            raise ContextCacheError(f"{str(mpath)!r} lacks {', '.join(missing)}")
        path = folder / TENSORS
        files = m["files"] if isinstance(m["files"], dict) else {}
        want = files.get(TENSORS) if isinstance(files.get(TENSORS), dict) else {}
        if not path.is_file():
            raise ContextCacheError(f"{str(path)!r} is missing")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise ContextCacheError(f"{str(path)!r} has {size} bytes, its manifest says {want.get('bytes')}: truncated")
        if _sha256(path) != want.get("sha256"):
            raise ContextCacheError(f"{str(path)!r} does not match its manifest's sha256: the file was changed")
        generator.warm_up()
        if m["model"] != generator.model_name:
            raise ContextCacheError(
                f"{str(folder)!r} was made by model {m['model']!r}, not {generator.model_name!r}", param="model"
            )
        try:
            t = load_file(str(path))
        except SafetensorError as e:
            raise ContextCacheError(f"{str(path)!r} cannot be read: {e}") from None
        from ragcore.attention import decoder_layers

        n = len(decoder_layers(generator.model))
        if m["n_layers"] != n or any(f"keys.{i}" not in t or f"values.{i}" not in t for i in range(n)):
            raise ContextCacheError(
                f"{str(folder)!r} holds {m['n_layers']!r} layers' keys and values; the model has {n}", param="model"
            )
        ids = t.get("context_ids")
        if ids is None or ids.dim() != 2 or ids.shape[-1] != m["context_tokens"]:
            raise ContextCacheError(f"{str(path)!r} holds no context_ids of {m['context_tokens']!r} tokens")
        try:
            passages = [Chunk.from_dict(c) for c in m["passages"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ContextCacheError(f"{str(mpath)!r} has a malformed passage: {e}") from None
        layers = [(t[f"keys.{i}"], t[f"values.{i}"]) for i in range(n)]
        dtype = generator.model.dtype
        if layers[0][0].dtype != dtype:  # saved by a generator of another precision (float32 on CPU, bf16 on CUDA)
            logger.info("%s: keys and values cast from %s to the model's %s", folder, layers[0][0].dtype, dtype)
            layers = [(k.to(dtype), v.to(dtype)) for k, v in layers]
        return cls(
            generator,
            passages,
            ids,
            layers,
            {i: t[f"mask.{i}"] for i in range(n) if f"mask.{i}" in t},
            str(m["compressor"]),
            m["system"],
            m["report"] if isinstance(m["report"], dict) else {},
        )


def prefill_context(
    generator: Generator,
    passages: Sequence[Chunk | ScoredChunk],
    compressor: Any = None,
    system: str | None = None,
    ratio: float | None = None,
) -> CompressedContext:
    """Prefill ``passages`` (the prompt up to its question) once under ``compressor`` and return the
    :class:`CompressedContext`.

    ``compressor`` and ``ratio``: as :func:`context_compressor`. Raises ``ConfigError`` for a bad compressor or
    ratio, or no passages, and ``PromptTooLongError`` (before any prefill) when the context with a short question
    leaves no room for a default answer in the model's window."""
    from ragcore.generator import GenerationConfig

    chunks = [p.chunk if isinstance(p, ScoredChunk) else p for p in passages]
    if not chunks:
        raise ConfigError("prefill_context needs at least one passage", param="passages")
    comp = context_compressor(compressor, ratio)
    generator.warm_up()
    prompt = generator.prompt(PLACEHOLDER, chunks, system)
    n = prompt.question_start
    new, window = GenerationConfig().max_new_tokens, generator.context_window
    if len(prompt) + new > window:  # no question could be asked of it: refuse before the (long) prefill
        raise PromptTooLongError(
            f"the context's {n} tokens leave no room for a question in {generator.model_name!r}'s window of "
            f"{window} tokens ({new} of them kept for the answer); give fewer or shorter passages"
        )
    model = generator.model
    ids = prompt.input_ids[:, :n].to(model.device)
    cache = kvcache.new_cache(model.config)
    base = getattr(model, model.base_model_prefix, model)
    t0 = time.perf_counter()
    masks: dict[int, torch.Tensor] = {}
    report: dict[str, Any] = {}
    with torch.inference_mode():
        if comp is None:
            kvcache.call(base, cache, input_ids=ids, use_cache=True)
        else:
            with comp.apply(model, cache, prompt) as call:
                kvcache.call(base, cache, input_ids=ids, use_cache=True)
            masks, report = call.head_masks(), call.report.to_dict()
    report["prefill_s"] = time.perf_counter() - t0
    layers = [kvcache.get_kv(cache, i) for i in range(kvcache.n_layers(cache))]
    label = compressor_label(comp)
    logger.info("prefilled a context of %d tokens under %s", n, label)
    return CompressedContext(generator, chunks, ids.cpu(), layers, masks, label, system, report)


def context_compressor(compressor: Any = None, ratio: float | None = None) -> Any:
    """The KV compressor a compressed context is made with, or None for the full cache.

    ``compressor``: a KV compressor (used as given), its spec string, ``"none"`` (the full cache) or None for
    ``compress.kv.DEFAULT_AGNOSTIC``. ``ratio``: the fraction removed, for a spec string (or the default) that
    sets neither ratio nor budget; without it, ``compress.kv.DEFAULT_AGNOSTIC_RATIO``. Raises ``ConfigError`` for
    a bad spec or ratio, or a ratio given both in the spec and here."""
    from compress.kv import DEFAULT_AGNOSTIC, DEFAULT_AGNOSTIC_RATIO

    if compressor == "none":
        return None
    if compressor is None:
        compressor = DEFAULT_AGNOSTIC
    if not isinstance(compressor, str):
        return compressor
    from ragcore.registry import parse_spec

    _, options, _ = parse_spec(compressor, "kv_compressor")
    if ratio is None and "ratio" not in options and "budget" not in options:
        ratio = DEFAULT_AGNOSTIC_RATIO
    return registry("kv_compressor").build(compressor, **({} if ratio is None else {"ratio": ratio}))


def compressor_label(comp: Any) -> str:
    """The label a compressed context records for ``comp`` (``"none"`` for None): the compressor's label with its
    ratio (or budget), which the label alone leaves out."""
    if comp is None:
        return "none"
    label = comp.label
    extra = f"budget={comp.budget}" if comp.budget is not None else f"ratio={comp.ratio:g}"
    head, sep, rest = label.partition(":")
    if head.endswith(")"):
        return f"{head[:-1]}, {extra}){sep}{rest}"
    return f"{head}({extra}){sep}{rest}"


MANIFEST_KEYS = ("model", "compressor", "context_tokens", "n_layers", "system", "passages", "report", "files")


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's JSON (sorted keys, compact) without its own ``sha256`` field."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def is_saved_context(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest of a saved context (of any version of this format)."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == FORMAT


def check_target(folder: Path) -> None:
    """Refuse a path that :meth:`CompressedContext.save` must not replace or cannot write: a file, a folder holding
    anything but a saved context, a path under a file, the current folder (or one holding it) and a filesystem
    root (the save renames a new folder into place), or a place where no folder can be made (tried: a temporary
    folder is made there and removed). Raises ``ContextCacheError`` quoting the path."""
    folder = Path(os.path.abspath(folder))
    if folder == Path(folder.anchor):
        raise ContextCacheError(f"{str(folder)!r} is a filesystem root: give a folder for the saved context")
    if folder.exists() and folder.is_dir() and (Path.cwd() == folder or folder in Path.cwd().parents):
        raise ContextCacheError(
            f"{str(folder)!r} is the current folder or holds it, which saving would replace: give a folder inside it"
        )
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ContextCacheError(f"cannot save a context under {str(parent)!r}: it is a file, not a folder")
            try:  # where the save's temporary folder (or the missing parents) will go
                os.rmdir(tempfile.mkdtemp(prefix=f".{folder.name}.probe.", dir=parent))
            except OSError as e:
                raise ContextCacheError(
                    f"cannot save a context at {str(folder)!r}: {str(parent)!r} is not writable ({e.strerror or e})"
                ) from None
            break
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ContextCacheError(f"{str(folder)!r} is a file, not a folder for a saved context")
    if any(folder.iterdir()) and not is_saved_context(folder):
        raise ContextCacheError(
            f"{str(folder)!r} holds files that are not a saved context: give an empty or new folder (nothing was "
            "changed there)"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
