"""The stage contract, written once.

A stage is a small ``@dataclass`` that holds configuration only:

* ``name`` (ClassVar): its key in its registry (:mod:`ragcore.registry`), in ``ScoredChunk.scores`` and in the
  answer's per-stage report;
* ``label``: a spec string from which the registry rebuilds an equal stage (``"chunk(chunk_size=5):snapkv"``);
* a light ``__init__`` and an idempotent ``warm_up()``; preparation that needs the model (a calibration) goes in
  ``prepare(lm)``;
* validation in ``__post_init__`` through the validators below, whose errors name the field and quote the value;
* no per-call state on the instance: what a call produces (reports, masks, timings) comes back in its result, so
  one instance serves concurrent requests.

One typed method per kind; none mutates its input:

=================  ================================================  ===========================================
kind               method                                            returns
=================  ================================================  ===========================================
Retriever          ``retrieve(question, k)``                         ``list[ScoredChunk]``, ranks 1..k
Reranker           ``rerank(question, passages, lm)``                a permutation of ``passages``
ContextCompressor  ``compress(question, passages, lm)``              passages holding text of the input
KVCompressor       ``apply(model, cache, prompt)`` context manager   yields the call's state (its report, masks)
Tracer             ``trace(prompt, generation, lm)``                 per answer sentence: cited spans and scores
Detector           ``flag(segments)``                                flags with reasons
=================  ================================================  ===========================================

``lm`` is the pipeline's one loaded :class:`ragcore.generator.Generator`, passed at call time, so every stage that
reads attention shares one model, one attention module and one set of prompt spans.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ragcore.errors import ConfigError
from ragcore.registry import label_of
from ragcore.types import ScoredChunk

if TYPE_CHECKING:
    from ragcore.generator import Generation, Generator
    from ragcore.prompt import Prompt


def option(default: Any, *, label: bool = True, **rule: Any) -> Any:
    """A stage option: a dataclass field whose value :class:`Stage` checks on construction.

    The rule follows the default's type: an ``int`` takes ``minimum``/``maximum`` (:func:`check_int`), a
    ``float`` takes ``low``/``high``/``low_open``/``high_open``/``what`` (:func:`check_number`), a ``bool`` must
    be a bool, and ``choices=`` restricts any value to a closed set. ``kind=int|float`` gives the rule of a field
    whose default is None (None stays allowed). ``label=False`` leaves the option out of the stage's label
    (calibrated state)."""
    kind = rule.pop("kind", type(default))
    rule["nullable"] = default is None
    return field(default=default, metadata={"label": label, "kind": kind, "rule": rule})


def check_option(name: str, value: Any, kind: type, rule: dict[str, Any]) -> None:
    """Check ``value`` of the option ``name`` against its ``kind`` and ``rule`` (see :func:`option`)."""
    if value is None and rule.get("nullable"):
        return
    if "choices" in rule:
        check_choice(name, value, rule["choices"])
    elif kind is bool:
        check_bool(name, value)
    elif kind is int:
        check_int(name, value, rule.get("minimum"), rule.get("maximum"))
    elif kind is float:
        check_number(name, value, **{k: v for k, v in rule.items() if k not in ("nullable", "choices")})
    elif not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")


@dataclass
class Stage:
    """Base of every stage: its ``name``, its ``label``, its options checked on construction, and the no-op
    lifecycle hooks."""

    name: ClassVar[str] = "stage"
    label_skip: ClassVar[tuple[str, ...]] = ()  # fields left out of the label (set apart, e.g. a KV ratio)

    def __post_init__(self) -> None:
        for f in fields(self):
            if "kind" in f.metadata:
                check_option(f.name, getattr(self, f.name), f.metadata["kind"], f.metadata["rule"])

    @property
    def label(self) -> str:
        """The spec string that rebuilds this stage (options that differ from their defaults, inner stage)."""
        return label_of(self, self.label_skip)

    def warm_up(self) -> None:
        """Load what the stage needs (idempotent); default: nothing."""

    def prepare(self, lm: Any) -> None:
        """Preparation that needs the model (a calibration), called before the stage first uses it."""


# ---- the kinds ------------------------------------------------------------------------------------------------
@runtime_checkable
class Retriever(Protocol):
    name: ClassVar[str]

    def retrieve(self, question: str, k: int) -> list[ScoredChunk]:
        """The top ``k`` chunks for ``question``, ranks 1..k, every score kept in ``ScoredChunk.scores``."""
        ...


@runtime_checkable
class Reranker(Protocol):
    name: ClassVar[str]

    def rerank(self, question: str, passages: Sequence[ScoredChunk], lm: Generator) -> list[ScoredChunk]:
        """The passages in the order the generator should read them (a permutation of the input ids)."""
        ...


@runtime_checkable
class ContextCompressor(Protocol):
    name: ClassVar[str]

    def compress(self, question: str, passages: Sequence[ScoredChunk], lm: Generator) -> list[ScoredChunk]:
        """Passages holding only text of the input, with their true source spans."""
        ...


@runtime_checkable
class KVCompressor(Protocol):
    name: ClassVar[str]

    def apply(self, model: Any, cache: Any = None, prompt: Prompt | None = None) -> AbstractContextManager[Any]:
        """Compress ``cache`` right after its prefill inside the block; yields the call's state and report."""
        ...


@runtime_checkable
class Tracer(Protocol):
    name: ClassVar[str]

    def trace(self, prompt: Prompt, generation: Generation, lm: Generator) -> Any:
        """Per answer sentence, the context segments that caused it, with scores."""
        ...


@runtime_checkable
class Detector(Protocol):
    name: ClassVar[str]

    def flag(self, segments: Sequence[Any]) -> list[Any]:
        """The segments that try to steer the model, each with its reason."""
        ...


# ---- shared validators: errors name the field and quote the value ---------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> None:
    """``value`` is an integer (not a bool) within [minimum, maximum]."""
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum == 1 and maximum is None:
            want = "a positive integer"
        elif minimum == 0 and maximum is None:
            want = "a non-negative integer"
        elif maximum is None:
            want = f"an integer >= {minimum}" if minimum is not None else "an integer"
        else:
            want = f"an integer in [{minimum}, {maximum}]"
        raise ConfigError(f"{field} must be {want}, got {value!r}")


def check_number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> None:
    """``value`` is a finite number in the interval given by ``low``/``high`` (open where said)."""
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{field} must be a number in {interval}{' ' + what if what else ''}, got {value!r}")


def check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")


def check_choice(field: str, value: Any, options: Sequence[Any]) -> None:
    if value not in options:
        raise ConfigError(f"{field} must be one of {', '.join(map(repr, options))}, got {value!r}")


def iter_stages(stage: Any) -> Iterator[Any]:
    """A stage and its inner stages, outermost first."""
    while stage is not None:
        yield stage
        stage = getattr(stage, "inner", None)
