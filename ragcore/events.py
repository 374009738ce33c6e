"""The events of a streamed answer (:meth:`ragcore.pipeline.Pipeline.stream`), in the order they come:

``retrieval`` (the passages the generator reads, once), ``token`` (a piece of answer text, many), ``citation``
(one per cited passage, after the text), ``done`` (the whole ``Answer``, last). The service adds ``error`` (a
failure after the stream began). Each event is a dataclass with ``type`` and ``to_dict()`` (what the service sends
as the ``data`` of a server-sent event named ``type``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ragcore.types import Answer, Citation, ScoredChunk


@dataclass
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class RetrievalEvent(Event):
    """The passages in the prompt, in prompt order, and the ids of those dropped (the window was full)."""

    type: ClassVar[str] = "retrieval"
    passages: list[ScoredChunk]
    dropped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passages": [p.to_dict() for p in self.passages], "dropped": list(self.dropped)}


@dataclass
class TokenEvent(Event):
    """A piece of the answer's text (joined, the pieces are the answer before its surrounding space is stripped)."""

    type: ClassVar[str] = "token"
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass
class CitationEvent(Event):
    type: ClassVar[str] = "citation"
    citation: Citation

    def to_dict(self) -> dict[str, Any]:
        return self.citation.to_dict()


@dataclass
class DoneEvent(Event):
    """The whole answer, equal to what ``Pipeline.ask`` returns for the question."""

    type: ClassVar[str] = "done"
    answer: Answer

    def to_dict(self) -> dict[str, Any]:
        return answer_dict(self.answer)


@dataclass
class ErrorEvent(Event):
    type: ClassVar[str] = "error"
    error: str
    message: str
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, "param": self.param}


def answer_dict(answer: Answer) -> dict[str, Any]:
    """``answer.to_dict()`` with ``answer`` (the text) and ``flags`` (a detector's; [] without one) at the top."""
    d = answer.to_dict()
    return {"answer": answer.text, "flags": d.get("flags", []), **d}
