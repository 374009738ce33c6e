"""Typed errors. Every error quotes the bad value and, where there is a closed set, lists the options."""

from __future__ import annotations


class RagcoreError(Exception):
    """Base class of every error ragcore raises on purpose.

    ``param``: the library parameter at fault, if one is (the CLI maps it to its flag); ``hint``: what to do next.
    """

    param: str | None = None
    hint: str | None = None

    def __init__(self, *args: object, param: str | None = None, hint: str | None = None) -> None:
        super().__init__(*args)
        if param is not None:
            self.param = param
        if hint is not None:
            self.hint = hint


class ConfigError(RagcoreError, ValueError):
    """A parameter has a bad value."""


class EmptyQueryError(RagcoreError, ValueError):
    """A query is empty or only whitespace."""

    def __init__(self, query: object) -> None:
        super().__init__(f"query must contain text, got {query!r}")


class EmptyCorpusError(RagcoreError, ValueError):
    """An index or retriever was asked to work on no documents."""


class UnknownModelError(RagcoreError, KeyError):
    """A model name is neither registered, a local folder, nor a hub id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ModelNotInstalledError(RagcoreError, ImportError):
    """A bundled model's package is missing; the message names the pip command."""


class ModelIntegrityError(RagcoreError):
    """Bundled model files do not match their expected checksum."""


class IndexError_(RagcoreError):
    """Base of index errors (named with a trailing underscore to leave the builtin alone)."""


class IndexNotFoundError(IndexError_, FileNotFoundError):
    """No index at the given path."""


class IndexCorruptError(IndexError_):
    """The index on disk is damaged (truncated, tampered with, or inconsistent)."""


class IndexMismatchError(IndexError_):
    """The index was built with another schema version or embedder than the one asked for."""


# -- every error a user can meet has a type; the CLI maps types to exit codes and ``param`` to flags --------------


class IndexPathError(IndexError_, ConfigError):
    """The index path exists but is not an index folder (e.g. a regular file)."""

    param = "path"


class IndexLockedError(IndexError_):
    """Another writer holds the index's lock and did not release it within the timeout."""

    param = "lock_timeout"


class IndexWriteError(IndexError_):
    """Writing a new index version failed (disk full, permissions); the previous version is unchanged."""


class SourceNotFoundError(RagcoreError, KeyError):
    """A source id is not in the index."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class NoQueryTermsError(RagcoreError, ValueError):
    """A query has no term BM25 can match (only punctuation, stop words or one-letter words)."""

    param = "mode"
    hint = "use mode 'dense' or 'hybrid', which match the query by meaning"

    def __init__(self, query: str) -> None:
        super().__init__(
            f"query {query!r} has no terms BM25 can match (only punctuation, stop words or 1-letter words)"
        )


class DocumentError(RagcoreError):
    """One file could not be turned into text: unreadable, binary, damaged, or holding no text."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r}: {reason}")
        self.path, self.reason = path, reason


class UnsupportedFileError(DocumentError, ValueError):
    """A file type ragcore does not read; the message lists the supported ones."""


class ModelNotAvailableError(RagcoreError, OSError):
    """A model id is neither bundled nor in the local cache, and the hub cannot be reached (offline)."""

    param = "model"


class DeviceError(ConfigError):
    """The device asked for is not available (e.g. ``cuda`` with a CPU-only build of torch)."""

    param = "device"


class PromptTooLongError(RagcoreError, ValueError):
    """A prompt does not fit the model's context window, even with a single passage."""


class StageError(RagcoreError):
    """A pipeline stage failed with an error of its own; the message names the stage kind and its name."""


class ContextCacheError(RagcoreError):
    """A saved compressed context is missing, truncated, tampered with, of another version, or of another model."""

    param = "context_cache"
