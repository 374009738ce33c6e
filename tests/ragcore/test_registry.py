"""The registry and its spec language (one for every stage kind) and the shared validators."""

from __future__ import annotations

import pytest

from ragcore.errors import ConfigError
from ragcore.registry import REGISTRIES, parse_spec, registry, split_top
from ragcore.stages import check_choice, check_int, check_number


def test_parse_spec():
    assert parse_spec("snapkv") == ("snapkv", {}, None)
    assert parse_spec(" chunk(chunk_size=5, share_heads=False) : snapkv(window=64)") == (
        "chunk",
        {"chunk_size": 5, "share_heads": False},
        "snapkv(window=64)",
    )
    assert parse_spec("a(x='b:c,d', y=(1, 2)):b:c") == ("a", {"x": "b:c,d", "y": (1, 2)}, "b:c")
    assert split_top("chunk(a=1,b=2):snapkv,h2o", ",") == ["chunk(a=1,b=2):snapkv", "h2o"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("snapkv(window=3", r"unbalanced brackets .* 1 '\(' not closed"),
        ("snapkv)", r"a '\)' closes nothing"),
        ("snapkv(window)", "bad option 'window'.*key=value"),
        ("snapkv(window=os.system('x'))", "literal"),
        ("snapkv(window=__import__('os'))", "literal"),
        ("snapkv(window=1, window=2)", "given twice"),
        ("snap-kv", "bad kv_compressor name 'snap-kv'"),
        ("snapkv(window=1)x", "text after the closing"),
        ("chunk:", "names no inner"),
        ("", "non-empty string"),
        ("snapkv(a='x)", "unterminated string"),
    ],
)
def test_bad_specs_are_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        registry("kv_compressor").build(spec)


def test_unknown_names_and_options_list_the_valid_ones():
    kv = registry("kv_compressor")
    with pytest.raises(
        ConfigError,
        match="unknown kv_compressor 'snapvk' \\(did you mean 'snapkv'\\?\\); options: streaming_llm, snapkv",
    ):
        kv.build("snapvk")
    with pytest.raises(
        ConfigError, match="unknown option 'windw' for kv_compressor 'snapkv'.*options: .*window, kernel_size"
    ):
        kv.build("snapkv(windw=3)")
    with pytest.raises(ConfigError, match="'knorm' takes no inner kv_compressor.*wrappers: caote"):
        kv.build("knorm:snapkv")
    with pytest.raises(ConfigError, match="unknown stage kind 'quokka'"):
        registry("quokka")


def test_an_option_given_twice_is_refused():
    """Field report: `--compressor "snapkv(ratio=0.9)"` ran at --ratio's default and said 0.5."""
    kv = registry("kv_compressor")
    with pytest.raises(ConfigError, match="ratio is set twice.*0.9 in the spec and 0.5 as a parameter"):
        kv.build("snapkv(ratio=0.9)", ratio=0.5)
    with pytest.raises(ConfigError, match="window is set twice"):
        kv.build("snapkv(window=8)", window=16)
    assert kv.build("snapkv(ratio=0.9)").ratio == 0.9
    assert kv.build("snapkv(ratio=0.5)", ratio=0.5).ratio == 0.5  # the same value twice is no conflict


def test_every_kind_has_a_registry_that_loads_lazily():
    assert set(REGISTRIES) == {"retriever", "reranker", "context_compressor", "kv_compressor", "tracer", "detector"}
    assert "hybrid" in registry("retriever") and "snapkv" in registry("kv_compressor")


def test_validators_name_the_field_and_quote_the_value():
    with pytest.raises(ConfigError, match="window must be a positive integer, got 0"):
        check_int("window", 0, 1)
    with pytest.raises(ConfigError, match="window must be a positive integer, got True"):
        check_int("window", True, 1)
    with pytest.raises(ConfigError, match=r"ratio must be a number in \[0, 1\), got 1"):
        check_number("ratio", 1, 0, 1, high_open=True)
    with pytest.raises(ConfigError, match="ratio must be a number in .*got nan"):
        check_number("ratio", float("nan"), 0, 1)
    with pytest.raises(ConfigError, match="mode must be one of 'a', 'b', got 'c'"):
        check_choice("mode", "c", ("a", "b"))


def test_a_fresh_process_builds_every_kind_by_name():
    """The first lookup imports the kind's package, which registers itself (and may look itself up) meanwhile."""
    import subprocess
    import sys

    code = (
        "from ragcore.registry import REGISTRIES, registry\n"
        "print(registry('kv_compressor').build('chunk:snapkv', ratio=0.5).label)\n"
        "print(sorted(k for k, r in REGISTRIES.items() if r.names() is not None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split("\n")[0] == "chunk:snapkv"
