"""PipelineConfig: keyword arguments over RAGCORE_ environment variables over a TOML file; errors name the field."""

from __future__ import annotations

import pytest

from ragcore.config import PipelineConfig
from ragcore.errors import ConfigError


def test_kwargs_over_env_over_toml(tmp_path, monkeypatch):
    f = tmp_path / "ragcore.toml"
    f.write_text('index = "ix"\nk = 3\nkv_compressor = "snapkv(ratio=0.5)"\nmax_new_tokens = 16\n')
    monkeypatch.setenv("RAGCORE_K", "4")
    monkeypatch.setenv("RAGCORE_API_KEY", "abc")
    cfg = PipelineConfig.load(f, max_new_tokens=8)
    assert (cfg.index, cfg.k, cfg.max_new_tokens, cfg.kv_compressor) == ("ix", 4, 8, "snapkv(ratio=0.5)")
    assert cfg.api_key.get_secret_value() == "abc" and cfg.public()["api_key"] == "***"
    monkeypatch.delenv("RAGCORE_K")
    assert PipelineConfig.load(f).k == 3 and PipelineConfig.load().k == 5  # no file: defaults


def test_bad_values_name_the_field_and_quote_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"^k: .*greater than or equal to 1.*got 0") as e:
        PipelineConfig.load(k=0)
    assert e.value.param == "k"
    with pytest.raises(ConfigError, match=r"reranker: .*unbalanced brackets"):
        PipelineConfig.load(reranker="attnrank(layer=12")
    f = tmp_path / "bad.toml"
    f.write_text("k = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as e:
        PipelineConfig.load(f)
    assert e.value.param == "config"
    f.write_text("kk = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'kk'"):
        PipelineConfig.load(f)
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineConfig.load(tmp_path / "missing.toml")


def test_none_leaves_a_stage_out():
    assert PipelineConfig.load(kv_compressor="none", reranker="").kv_compressor is None
