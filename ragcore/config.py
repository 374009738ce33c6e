"""One configuration for a pipeline and the service around it: stage spec strings and limits.

``PipelineConfig`` is read, highest priority first, from keyword arguments, environment variables with the prefix
``RAGCORE_`` (``RAGCORE_KV_COMPRESSOR="snapkv(ratio=0.5)"``, ``RAGCORE_K=3``), and a TOML file
(``PipelineConfig.load("ragcore.toml")``)::

    index = "my-index"
    generator = "qwen2.5-0.5b"
    reranker = "attnrank(layer=12)"
    kv_compressor = "snapkv(ratio=0.5)"
    k = 5
    max_new_tokens = 64

Stage fields are spec strings in the registry's language (:mod:`ragcore.registry`); they are parsed here (a
malformed spec is refused on load) and built by :meth:`ragcore.pipeline.Pipeline.from_config`. ``ragcore ask
--config`` and ``ragcore serve --config`` read the same file.
"""

from __future__ import annotations

import contextvars
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from ragcore.errors import ConfigError
from ragcore.models import DEFAULT_GENERATOR
from ragcore.registry import parse_spec

_TOML: contextvars.ContextVar[Path | None] = contextvars.ContextVar("ragcore_config_toml", default=None)
STAGE_FIELDS = ("retriever", "reranker", "context_compressor", "kv_compressor", "tracer", "detector")


class PipelineConfig(BaseSettings):
    """A pipeline (stages as spec strings) and the limits of the service that runs it.

    Parameters
    ----------
    index:
        The index folder the retriever loads (``ragcore index`` writes it; ``$RAGCORE_INDEX`` as for the CLI).
    retriever:
        The retriever's spec (``hybrid``, ``hybrid(min_score=0.2)``): options set its search settings.
    reranker, context_compressor, kv_compressor, tracer, detector:
        Optional stages, as spec strings (None: the stage is left out).
    query_aware:
        With a KV compressor: compress after reading the question.
    generator:
        The generator model (a bundled name, a local folder or ``.gguf``).
    device:
        ``cpu``, ``cuda`` or ``cuda:N`` (None: cuda when available).
    k:
        Passages retrieved per question (the service's default ``top_k``).
    max_new_tokens:
        Answer length limit in tokens (the service's default and its upper bound per request).
    max_time:
        Generation time limit in wall-clock seconds (None: none); the answer is cut there (``stopped``).
    max_prompt_tokens:
        Token budget of prompt + answer (None: the model's window); a question that does not fit is refused
        before generation.
    max_top_k:
        The largest ``top_k`` a request may ask for.
    max_question_chars:
        The longest question accepted, in characters.
    max_body_bytes:
        The largest request body accepted, in bytes.
    max_concurrency:
        Generations run at once; more are answered 429 with ``Retry-After``.
    retry_after_s:
        The ``Retry-After`` a 429 carries, in seconds.
    api_key:
        Key the write endpoints require (header ``X-API-Key`` or ``Authorization: Bearer``); None: open.
    protect_reads:
        Whether the read endpoints (ask, search) require the key too.
    lock_timeout:
        Seconds a write waits for another writer of the index.
    """

    model_config = SettingsConfigDict(env_prefix="RAGCORE_", extra="forbid", validate_default=True)

    index: str = ".ragcore/index"
    retriever: str = "hybrid"
    reranker: str | None = None
    context_compressor: str | None = None
    kv_compressor: str | None = None
    query_aware: bool = False
    tracer: str | None = None
    detector: str | None = None
    generator: str = DEFAULT_GENERATOR
    device: str | None = None
    k: int = Field(5, ge=1, le=1000)
    max_new_tokens: int = Field(64, ge=1, le=32768)
    max_time: float | None = Field(None, gt=0)
    max_prompt_tokens: int | None = Field(None, ge=16)
    max_top_k: int = Field(20, ge=1, le=1000)
    max_question_chars: int = Field(2000, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1024)
    max_concurrency: int = Field(4, ge=1)
    retry_after_s: int = Field(1, ge=1)
    api_key: SecretStr | None = None
    protect_reads: bool = False
    lock_timeout: float = Field(30.0, ge=0)

    @field_validator(*STAGE_FIELDS)
    @classmethod
    def _spec(cls, value: str | None, info: Any) -> str | None:
        if value is None or (info.field_name != "retriever" and value.strip().lower() in ("", "none")):
            return None
        parse_spec(value, info.field_name)  # syntax only; the stage is built by Pipeline.from_config
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML.get()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        return sources + ((TomlConfigSettingsSource(settings_cls, toml_file=toml),) if toml is not None else ())

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
        """The config from the TOML file ``path`` (if given), environment variables and ``overrides``, in
        rising priority. Raises ``ConfigError`` naming the field and quoting the value (``param`` = the field),
        or the file (``param="config"``) when it is missing or not TOML."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if path is None:
            return make(cls, overrides)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist or is not a file", param="config")
        try:
            tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}", param="config") from None
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in config file {str(p)!r}; keys: {', '.join(cls.model_fields)}",
                param="config",
            )
        token = _TOML.set(p)
        try:
            return make(cls, overrides)
        finally:
            _TOML.reset(token)

    def public(self) -> dict[str, Any]:
        """The settings as JSON, the API key hidden."""
        d = self.model_dump()
        d["api_key"] = "***" if self.api_key is not None else None
        return d


def make(cls: type[PipelineConfig], values: dict[str, Any]) -> PipelineConfig:
    """``cls(**values)``, a validation error turned into a ``ConfigError`` naming the first bad field."""
    try:
        return cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "config"
        raise ConfigError(f"{field}: {err['msg']}, got {err.get('input')!r}", param=field) from None
