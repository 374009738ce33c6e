"""One registry and one spec language for every stage kind.

A spec string names a registered stage, its options in brackets, and, for a wrapper, its inner stage after a
colon::

    snapkv
    snapkv(window=64, kernel_size=7)
    chunk(chunk_size=5):snapkv(window=64)
    adaptive(safeguard=0.1):chunk:snapkv

Option values are Python literals (``ast.literal_eval``: numbers, strings, booleans, None, lists, tuples, dicts),
never evaluated code. A wrapper is a stage with an ``inner`` field; nothing else marks it. A stage's ``label``
is the spec string of its own options that differ from their defaults, so ``registry.build(stage.label)`` gives an
equal stage (options marked ``label=False``, such as calibrated state, are left out).

Each kind's registry is filled by its home package (``compress.kv`` for KV compressors, ...), imported on the first
lookup, so ``ragcore`` itself imports nothing above it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Generic, TypeVar

from ragcore.errors import ConfigError

T = TypeVar("T")


def _depths(text: str) -> Iterator[tuple[str, int, str]]:
    """Each character of ``text`` with the bracket depth and the open quote (``""`` outside strings) after it."""
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        yield ch, depth, quote


def split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` at ``sep`` outside brackets and quotes: ``"chunk(a=1,b=2),snapkv"`` -> 2 parts at ``","``."""
    parts, cur = [], []
    for ch, depth, quote in _depths(text):
        if ch == sep and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _check_brackets(spec: str, kind: str) -> None:
    depth, quote = 0, ""
    for _, depth, quote in _depths(spec):  # noqa: B007 - the last depth and quote are read after the loop
        if depth < 0:
            raise ConfigError(f"unbalanced brackets in {kind} spec {spec!r}: a ')' closes nothing")
    if quote:
        raise ConfigError(f"unterminated string in {kind} spec {spec!r}: missing {quote}")
    if depth:
        raise ConfigError(f"unbalanced brackets in {kind} spec {spec!r}: {depth} '(' not closed")


def parse_spec(spec: str, kind: str = "stage") -> tuple[str, dict[str, Any], str | None]:
    """``"chunk(chunk_size=5):snapkv"`` -> ``("chunk", {"chunk_size": 5}, "snapkv")``.

    Raises ``ConfigError`` naming the spec for unbalanced brackets, a malformed name or an option that is not
    ``key=literal``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{kind} spec must be a non-empty string, got {spec!r}")
    _check_brackets(spec, kind)
    head, *rest = split_top(spec, ":")
    head = head.strip()
    name, _, opts = head.partition("(")
    name = name.strip()
    if not name.isidentifier():
        raise ConfigError(f"bad {kind} name {name!r} in {spec!r}; write name(key=value, ...)[:inner]")
    if opts:
        if not opts.rstrip().endswith(")"):
            raise ConfigError(f"bad {kind} spec {spec!r}: text after the closing ')' of {name!r}")
        opts = opts.rstrip()[:-1]
    options: dict[str, Any] = {}
    for item in split_top(opts, ","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        try:
            if not eq or not key.isidentifier():
                raise ValueError
            val = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ConfigError(
                f"bad option {item.strip()!r} in {kind} spec {spec!r}; write key=value with a literal value"
            ) from None
        if key in options:
            raise ConfigError(f"option {key!r} is given twice in {kind} spec {spec!r}")
        options[key] = val
    inner = ":".join(rest).strip() if rest else None
    if rest and not inner:
        raise ConfigError(f"{kind} spec {spec!r} ends with ':' but names no inner {kind}")
    return name, options, inner


def init_fields(cls: type) -> dict[str, Any]:
    """The constructor fields of a dataclass stage and their defaults (``MISSING`` where required)."""
    if not is_dataclass(cls):
        return {}
    out = {}
    for f in fields(cls):
        if f.init:
            out[f.name] = f.default if f.default is not MISSING else MISSING
    return out


def label_of(stage: Any, skip: Iterable[str] = ()) -> str:
    """The spec string of ``stage``: its name, the options that differ from their defaults, and its inner stage.

    Fields whose metadata says ``label=False`` and the names in ``skip`` are left out."""
    opts = []
    for f in fields(stage):
        if not f.init or f.name == "inner" or f.name in skip or not f.metadata.get("label", True):
            continue
        value = getattr(stage, f.name)
        if f.default is not MISSING and value == f.default:
            continue
        opts.append(f"{f.name}={value!r}")
    text = f"{stage.name}({', '.join(opts)})" if opts else stage.name
    inner = getattr(stage, "inner", None)
    if inner is not None:
        text += ":" + (inner if isinstance(inner, str) else inner.label)
    return text


class Registry(Generic[T]):
    """Stages of one kind by name. ``package`` is imported on first use; it registers its stages with ``add``.

    Parameters
    ----------
    kind:
        The kind's name in messages and in ``REGISTRIES`` (``"kv_compressor"``, ``"reranker"``, ...).
    package:
        The module that fills this registry when imported (``"compress.kv"``).
    method:
        The method every registered class must have (``"apply"``, ``"rerank"``, ...).
    """

    def __init__(self, kind: str, package: str, method: str) -> None:
        self.kind, self.package, self.method = kind, package, method
        self._classes: dict[str, type[T]] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False
        self._lock = threading.RLock()  # a package being imported may look itself up

    def add(self, *classes: type[T], aliases: dict[str, str] | None = None) -> None:
        """Register stage classes under their ``name``; ``aliases`` maps deprecated names to current ones."""
        for cls in classes:
            name = getattr(cls, "name", "")
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"{cls.__name__} has no valid name for the {self.kind} registry: {name!r}")
            if not callable(getattr(cls, self.method, None)):
                raise ConfigError(f"{cls.__name__} lacks {self.method}(), which every {self.kind} has")
            if self._classes.get(name, cls) is not cls:
                raise ConfigError(f"{self.kind} {name!r} is registered twice ({self._classes[name].__name__})")
            self._classes[name] = cls
        self._aliases.update(aliases or {})

    def _load(self) -> None:
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    importlib.import_module(self.package)
                    self._loaded = True

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self._load()
        return list(self._classes)

    def classes(self) -> dict[str, type[T]]:
        self._load()
        return dict(self._classes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes or name in self._aliases

    def __getitem__(self, name: str) -> type[T]:
        self._load()
        if name in self._aliases:
            new = self._aliases[name]
            warnings.warn(f"{self.kind} {name!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
            name = new
        if name not in self._classes:
            close = difflib.get_close_matches(name, self._classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}; options: {', '.join(self._classes)}")
        return self._classes[name]

    def wrappers(self) -> list[str]:
        """Names of the registered wrappers (stages with an ``inner`` field)."""
        return [n for n, c in self.classes().items() if "inner" in init_fields(c)]

    def build(self, spec: str | T, **overrides: Any) -> T:
        """A stage from a spec string (or a ready stage, returned as is when no overrides are given).

        ``overrides`` set options of the outermost stage; one also given in the spec is refused (it is
        ambiguous). Raises ``ConfigError`` for an unknown name (the options are listed), an unknown option (the
        valid ones are listed), a missing bracket, a bad literal, an inner stage on a non-wrapper, or a value the
        stage refuses."""
        if not isinstance(spec, str):
            if overrides:
                raise ConfigError(f"options {sorted(overrides)} cannot be applied to a ready {self.kind} {spec!r}")
            return spec
        name, options, inner = parse_spec(spec, self.kind)
        cls = self[name]
        valid = init_fields(cls)
        for key, value in overrides.items():
            if key in options and options[key] != value:
                raise ConfigError(
                    f"{key} is set twice for {self.kind} {spec!r}: {options[key]!r} in the spec and {value!r} "
                    "as a parameter; give it once"
                )
            options[key] = value
        unknown = [k for k in options if k not in valid or (k == "inner" and "inner" not in overrides)]
        if unknown:
            allowed = [k for k in valid if k != "inner"]
            raise ConfigError(
                f"unknown option {unknown[0]!r} for {self.kind} {name!r} in {spec!r}; options: {', '.join(allowed)}"
            )
        if inner is not None:
            if "inner" not in valid:
                raise ConfigError(
                    f"{self.kind} {name!r} takes no inner {self.kind} (got {spec!r}); "
                    f"wrappers: {', '.join(self.wrappers())}"
                )
            options["inner"] = self.build(inner)
        try:
            return cls(**options)
        except TypeError as e:
            raise ConfigError(f"bad options for {self.kind} {spec!r}: {e}") from None


REGISTRIES: dict[str, Registry[Any]] = {
    "retriever": Registry("retriever", "retrieval", "retrieve"),
    "reranker": Registry("reranker", "rerank", "rerank"),
    "context_compressor": Registry("context_compressor", "compress.context", "compress"),
    "kv_compressor": Registry("kv_compressor", "compress.kv", "apply"),
    "tracer": Registry("tracer", "ragcore.attribution", "trace"),
    "detector": Registry("detector", "ragcore.attribution", "flag"),
}


def registry(kind: str) -> Registry[Any]:
    """The registry of a stage kind (``"kv_compressor"``, ``"retriever"``, ...)."""
    if kind not in REGISTRIES:
        raise ConfigError(f"unknown stage kind {kind!r}; options: {', '.join(REGISTRIES)}")
    return REGISTRIES[kind]


def build(kind: str, spec: Any, **overrides: Any) -> Any:
    """``registry(kind).build(spec, **overrides)``."""
    return registry(kind).build(spec, **overrides)
