"""Core data types shared by every stage: plain dataclasses with a JSON round trip."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from ragcore.errors import ConfigError


def chunk_id(source_id: str, start: int, text: str) -> str:
    """Stable content-hash id: the same text at the same place in the same source gets the same id."""
    h = hashlib.sha256(f"{source_id}\0{start}\0{text}".encode())
    return h.hexdigest()[:16]


class _Record:
    """``to_dict``/``from_dict`` for a dataclass of JSON-able fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**d)


@dataclass(frozen=True)
class Chunk(_Record):
    """A passage of a source document. ``start``/``end`` are character offsets into the source."""

    text: str
    source_id: str = ""
    start: int = 0
    end: int = -1
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ConfigError(f"Chunk.text must be a str, got {type(self.text).__name__}: {self.text!r}")
        if self.end == -1:
            object.__setattr__(self, "end", self.start + len(self.text))
        if self.start < 0 or self.end < self.start:
            raise ConfigError(f"bad character span ({self.start}, {self.end}) for chunk of {self.source_id!r}")
        if not self.id:
            object.__setattr__(self, "id", chunk_id(self.source_id, self.start, self.text))


@dataclass
class ScoredChunk:
    """A chunk with the score every stage gave it (``scores['bm25']``, ``scores['dense']``, ...)."""

    chunk: Chunk
    scores: dict[str, float] = field(default_factory=dict)
    rank: int = 0

    @property
    def score(self) -> float:
        """The score of the last stage that scored this chunk."""
        return next(reversed(self.scores.values())) if self.scores else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"chunk": self.chunk.to_dict(), "scores": dict(self.scores), "rank": self.rank}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoredChunk:
        return cls(chunk=Chunk.from_dict(d["chunk"]), scores=dict(d["scores"]), rank=int(d["rank"]))


@dataclass
class Citation(_Record):
    """A passage the answer relies on; ``number`` is its [n] in the prompt."""

    number: int
    chunk_id: str
    source_id: str
    start: int
    end: int
    score: float = 0.0
    text: str = ""


@dataclass
class StageReport(_Record):
    """What one stage of a pipeline did for one answer: its registry ``name`` and ``kind``, its ``label``, the
    wall-clock ``seconds``, the passages or tokens in and out, and stage-specific ``details`` (JSON-able)."""

    kind: str
    name: str
    label: str = ""
    seconds: float = 0.0
    items_in: int | None = None
    items_out: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Answer:
    """A generated answer with its citations, the passages that were in the prompt, and a report per stage."""

    question: str
    text: str
    citations: list[Citation] = field(default_factory=list)
    passages: list[ScoredChunk] = field(default_factory=list)
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    kv: dict[str, Any] = field(default_factory=dict)  # compressor, kv_bytes held after prefill, kv_bytes_full, ...
    dropped: list[str] = field(default_factory=list)  # ids of chunks left out (window full), most relevant first
    stages: list[StageReport] = field(default_factory=list)
    sentences: list[SentenceCitation] = field(default_factory=list)  # per answer sentence, from a tracer
    flags: list[Flag] = field(default_factory=list)  # context segments a detector flagged

    def render(self) -> str:
        """The answer with ``[n]`` markers after each sentence (the passages it was traced to), or the plain
        text when it was not traced."""
        if not self.sentences:
            return self.text
        parts = []
        for s in self.sentences:
            marks = "".join(f"[{c.number}]" for c in s.citations)
            parts.append(f"{s.text}{' ' + marks if marks else ''}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "text": self.text,
            "citations": [c.to_dict() for c in self.citations],
            "passages": [p.to_dict() for p in self.passages],
            "model": self.model,
            "timings": dict(self.timings),
            "kv": dict(self.kv),
            "dropped": list(self.dropped),
            "stages": [r.to_dict() for r in self.stages],
            "sentences": [s.to_dict() for s in self.sentences],
            "flags": [f.to_dict() for f in self.flags],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(
            question=d["question"],
            text=d["text"],
            citations=[Citation.from_dict(c) for c in d.get("citations", [])],
            passages=[ScoredChunk.from_dict(p) for p in d.get("passages", [])],
            model=d.get("model", ""),
            timings=dict(d.get("timings", {})),
            kv=dict(d.get("kv", {})),
            dropped=list(d.get("dropped", [])),
            stages=[StageReport.from_dict(r) for r in d.get("stages", [])],
            sentences=[SentenceCitation.from_dict(s) for s in d.get("sentences", [])],
            flags=[Flag.from_dict(f) for f in d.get("flags", [])],
        )


@dataclass
class SourceSpan(_Record):
    """A cited passage: its ``[n]`` in the prompt, its chunk and source ids, and the character span
    [``start``, ``end``) in the source of its best-scoring segment (a sentence, a word window or the whole
    passage), with that segment's ``text`` and the tracer's ``score`` (relative to the sentence's best, in
    [0, 1])."""

    number: int
    chunk_id: str
    source_id: str
    start: int
    end: int
    score: float
    text: str = ""


@dataclass
class SentenceCitation:
    """One answer sentence (``text``, its character span [``start``, ``end``) in ``Answer.text``) and the
    passages it was traced to: those whose relative score reaches ``threshold``, best first."""

    text: str
    start: int
    end: int
    citations: list[SourceSpan] = field(default_factory=list)
    threshold: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "citations": [c.to_dict() for c in self.citations],
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentenceCitation:
        return cls(d["text"], d["start"], d["end"], [SourceSpan.from_dict(c) for c in d["citations"]], d["threshold"])


@dataclass
class Flag(_Record):
    """A context segment a detector flagged: the ``detector``'s name, the ``reason``, its passage ``number`` (in
    the prompt it was flagged in: once the defence has ``removed`` it, the answer's citations number the passages
    left), chunk and source ids, its character span in the source and its text, the detector's ``score``, and
    whether the defence ``removed`` it before regenerating."""

    detector: str
    reason: str
    number: int
    chunk_id: str
    source_id: str
    start: int
    end: int
    text: str
    score: float = 1.0
    removed: bool = False
