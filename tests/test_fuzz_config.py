"""Bad configuration of any shape ends in a ConfigError naming file, line and field."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shim import ConfigError, OrchConfig, flags
from shim.analysis.policy import Policy
from shim.base.yamlfile import load_yaml
from shim.sim import Profile

from .conftest import KIWI

scalars = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=4)
    ),
    max_leaves=15,
)
keys = st.sampled_from(
    [
        "assignments",
        "models",
        "defaults",
        "tasks",
        "legacy",
        "seed",
        "nodes",
        "kiwi.ocr",
        "kiwi.meal_plan",
        "shim.kill",
        "serve",
        "shadow",
        "service_type",
        "vram_mb",
        "alias",
        "model",
        "modality",
    ]
) | st.text(max_size=10)
documents = st.dictionaries(keys, values, max_size=5) | values
raw_text = st.text(max_size=300) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))


def as_yaml(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return "{}"


LOADERS: dict[str, Callable[[Path], Any]] = {
    "assignments": lambda p: OrchConfig(p, KIWI / "orch" / "model_registry.yaml"),
    "registry": lambda p: OrchConfig(KIWI / "orch" / "assignments.yaml", p),
    "flags": flags.load_flags_file,
    "file flags": lambda p: flags.FileFlags(p).close(),
    "profile": Profile.load,
    "policy": Policy.load,
}


_YAML_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def load(loader: Callable[[Path], Any], text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            loader(path)
        except ConfigError as exc:
            for problem in exc.problems:
                assert problem.path == str(path)
                assert problem.message
                # lines as YAML counts them: CR, NEL and the Unicode separators break too
                breaks = len(_YAML_BREAKS.findall(text))
                assert problem.line is None or 1 <= problem.line <= breaks + 2


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_structured_nonsense_is_a_config_error(name: str, doc: Any) -> None:
    load(LOADERS[name], as_yaml(doc))


@pytest.mark.parametrize("name", sorted(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=raw_text)
@example(text="\r\x85%")  # lines broken by CR and NEL, as YAML breaks them
def test_any_text_is_a_config_error(name: str, text: str) -> None:
    load(LOADERS[name], text)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x [*x]\n",  # a recursive alias
        "a: !!python/object:os.system x\n",  # a tag safe_load refuses
        "? [a, b]\n: 1\n",  # a complex key
        "a: 1\n" * 3,  # duplicate keys
        "\t- a\n",  # a tab where YAML forbids one
    ],
)
def test_yaml_edge_cases(text: str) -> None:
    for loader in LOADERS.values():
        load(loader, text)


def _outcome(text: str, *, pure: bool) -> str:
    """What loading ``text`` gives, as comparable text: the data, or the error."""
    try:
        doc = load_yaml("doc.yaml", text=text, pure=pure)
    except ConfigError as exc:
        return f"error: {exc}"
    return repr((doc.data, sorted(doc.lines.items(), key=repr), doc.problems))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=raw_text | documents.map(as_yaml))
def test_libyaml_and_pyyaml_parsers_load_alike(text: str) -> None:
    """Events come from libyaml when it is there, else from PyYAML's own parser: the
    same data, lines and errors either way; but for a few documents libyaml accepts
    and PyYAML's parser refuses (a tab after a scalar), taken at libyaml's word."""
    fast, pure = _outcome(text, pure=False), _outcome(text, pure=True)
    if not (pure.startswith("error") and not fast.startswith("error")):
        assert fast == pure


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_loaded_data_is_what_pyyaml_loads(doc: Any) -> None:
    text = as_yaml(doc)
    assert repr(load_yaml("doc.yaml", text=text).data) == repr(yaml.safe_load(text))
