"""Typed errors. Every error quotes the bad value and, where there is a closed set, lists the options."""

from __future__ import annotations


class RagcoreError(Exception):
    """Base class of every error ragcore raises on purpose."""


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


class PromptTooLongError(RagcoreError, ValueError):
    """A prompt does not fit the model's context window, even with a single passage."""


class StageError(RagcoreError):
    """A pipeline stage failed with an error of its own; the message names the stage kind and its name."""
