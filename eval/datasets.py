"""Dataset loaders. NQ-open: questions with gold answers; the corpus is every row's gold passage."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from ragcore.errors import ConfigError
from ragcore.types import Chunk

DATA_DIR = Path(__file__).parent / "data"
NQ_OPEN = DATA_DIR / "nq_open_oracle_dev.jsonl.gz"


@dataclass
class QAExample:
    id: str
    question: str
    answers: list[str]
    gold_ids: set[str] = field(default_factory=set)  # chunk ids of the gold passages
    meta: dict = field(default_factory=dict)


@dataclass
class QADataset:
    name: str
    examples: list[QAExample]
    corpus: list[Chunk]

    def by_id(self) -> dict[str, Chunk]:
        return {c.id: c for c in self.corpus}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} is not a (gzipped) JSON-lines file: {e}") from e


def passage_chunk(title: str, text: str) -> Chunk:
    """A Wikipedia passage as a chunk: the title heads the text (it helps both retrievers)."""
    return Chunk(text=f"{title}\n{text}", source_id=title, metadata={"title": title})


def load_nq_open(path: str | Path | None = None) -> QADataset:
    """NQ-open in the Lost-in-the-Middle oracle format (``id``, ``question``, ``answers``, ``gold.title/text``).

    The corpus is the set of distinct gold passages of all rows; each row's gold passage is its relevant chunk.
    """
    path = Path(path) if path else NQ_OPEN
    if not path.exists():
        raise FileNotFoundError(f"no data file at {str(path)!r}")
    rows = read_jsonl(path)
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no rows")
    corpus: dict[str, Chunk] = {}
    examples = []
    for i, r in enumerate(rows):
        try:
            c = passage_chunk(r["gold"]["title"], r["gold"]["text"])
            ex = QAExample(str(r.get("id", i)), r["question"], list(r["answers"]), {c.id})
        except (KeyError, TypeError) as e:
            raise ConfigError(
                f"{str(path)!r} row {i} lacks field {e} (needs question, answers, gold.title, gold.text)"
            ) from e
        corpus.setdefault(c.id, c)
        examples.append(ex)
    return QADataset(path.name, examples, list(corpus.values()))


def window(items: list, offset: int, limit: int | None, what: str = "items") -> list:
    """``items[offset:offset + limit]``, the slice every suite evaluates, refused by name when it is empty or
    the numbers are not what they say (a negative offset, a limit below 1, an offset past the end)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ConfigError(f"offset must be a non-negative integer, got {offset!r}", param="offset")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}", param="limit")
    if offset >= len(items):
        raise ConfigError(f"offset {offset} skips all {len(items)} {what}", param="offset")
    return items[offset:][:limit]
