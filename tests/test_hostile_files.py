"""Hostile flag and config files: an alias bomb, deep nesting, a huge file, a symlink
to a file full of secrets. Each is refused quickly with a located error that quotes
nothing from the file; YAML merge keys (``<<: *defaults``) are read as PyYAML reads
them."""

from __future__ import annotations

import itertools
import os
import re
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shim import ConfigError, OrchConfig, Shim, flags
from shim.analysis.policy import Policy
from shim.base.yamlfile import MAX_ALIAS_NODES, MAX_BYTES, MAX_DEPTH, load_yaml
from shim.flags.store import FileStore, Setting
from shim.ops.check import run_check
from shim.sim import Profile

from .conftest import KIWI
from .shimkit import records, wait_for

REGISTRY = KIWI / "orch" / "model_registry.yaml"
ASSIGNMENTS = KIWI / "orch" / "assignments.yaml"


def replace(path: Path, text: str) -> None:
    """Write ``path`` as editors and ``shim promote`` do, whole at once: a poll never
    sees it empty or half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bomb() -> str:
    """Billion laughs: nine lines, nine aliases each, 9**9 values when expanded."""
    names = "abcdefghi"
    lines = [f"a: &a [{','.join('x' * 9)}]"]
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


BOMB = _bomb()

LOADERS: dict[str, Callable[[Path], Any]] = {
    "flags": flags.load_flags_file,
    "file flags": lambda p: flags.FileFlags(p, poll_interval=60).close(),
    "file store": lambda p: FileStore(p).read(),
    "assignments": lambda p: OrchConfig(p, REGISTRY),
    "registry": lambda p: OrchConfig(ASSIGNMENTS, p),
    "profile": Profile.load,
    "policy": Policy.load,
}


def _refused(loader: Callable[[Path], Any], path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loader(path)
    return caught.value


# -- the alias bomb -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_an_alias_bomb_is_refused_in_milliseconds(name: str, tmp_path: Path) -> None:
    assert len(BOMB.encode()) <= 400
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    error = _refused(LOADERS[name], path)
    took = time.perf_counter() - started
    assert took < 0.5, f"refused after {took:.2f} s"
    [problem] = [p for p in error.problems if "alias" in p.message]
    assert problem.path == str(path)
    assert problem.line == 6, "f: 9**6 values, the first entry over the budget"
    assert f"{MAX_ALIAS_NODES:,}" in problem.message and "write the values out" in problem.message


def test_shim_check_refuses_a_bomb_at_once(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    report = run_check(ASSIGNMENTS, REGISTRY, path)
    assert time.perf_counter() - started < 0.5
    assert not report.ok
    assert any(p.line == 6 and "aliases" in p.message for p in report.problems)


def test_a_running_app_keeps_its_flags_through_a_bomb_and_takes_the_kill_switch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    log = tmp_path / "log.jsonl"
    shim = Shim("http://127.0.0.1:9", flags=flags.FileFlags(path, poll_interval=0.02), log_path=log)
    try:
        replace(path, BOMB)
        wait_for(lambda: "flags.invalid" in shim.stats()["internal_errors"], 2)
        assert shim.flags.decide("kiwi.meal_plan", None).compare, "the last good flags"
        killed = time.monotonic()
        replace(path, "shim.kill: true\nkiwi.meal_plan: {serve: 0, shadow: 100}\n")
        took = wait_for(lambda: not shim.flags.decide("kiwi.meal_plan", None).compare, 2)
        assert time.monotonic() - killed < 1, f"the kill switch took {took:.2f} s"
        assert shim.stats()["internal_errors"] == {"flags.invalid": 1}, "counted once"
    finally:
        shim.close()
        shim.flags.close()
    [error] = records(log, "shim.error")
    assert error["operation"] == "flags.invalid" and "aliases" in error["error"]
    levels = [r["level"] for r in records(log, "shim.flags")]
    assert levels == ["error", "info"], "the bomb refused, then the kill switch loaded"


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000 + "\n",  # nested deeper than the parser recurses
        "a: " + "{b: " * 200 + "1" + "}" * 200 + "\n",
        # each alias one level deeper: flat as written, deep once expanded
        "".join(f"l{i}: &l{i} [{f'*l{i - 1}' if i else 0}]\n" for i in range(MAX_DEPTH + 5)),
    ],
    ids=["brackets", "braces", "alias chain"],
)
def test_deep_nesting_is_a_located_config_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    for loader in LOADERS.values():
        error = _refused(loader, path)
        assert any("levels deep" in p.message and p.line for p in error.problems), str(error)


def test_a_recursive_alias_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("kiwi.a: {serve: 1}\nkiwi.b: &x [*x]\n")
    error = _refused(flags.load_flags_file, path)
    assert [(p.line, p.message) for p in error.problems] == [
        (
            2,
            "invalid YAML at column 13: an alias refers to itself (a recursive alias); "
            "write the value out",
        )
    ]


# -- merge keys -----------------------------------------------------------------------

MERGES = [
    # an entry merged into another, one key overridden locally
    "kiwi.meal_plan: &ramp {serve: 0, shadow: 100, stickiness: user_id}\n"
    "kiwi.ocr:\n  <<: *ramp\n  shadow: 50\n",
    # a mapping that merges a mapping that merges another
    "kiwi.a: &a {serve: 1}\nkiwi.b: &b {<<: *a, shadow: 2}\nkiwi.c: {<<: *b}\n",
]


@pytest.mark.parametrize("text", MERGES)
def test_merge_keys_read_as_pyyaml_reads_them(text: str, tmp_path: Path) -> None:
    assert load_yaml("f.yaml", text=text).data == yaml.safe_load(text)
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    state = flags.load_flags_file(path)
    for task, fields in yaml.safe_load(text).items():
        assert state.tasks[task].model_dump(include=set(fields)) == fields


def test_a_list_of_merges_takes_each_key_from_the_first_mapping_that_has_it() -> None:
    """As the merge key spec says (some PyYAML releases let the last one win)."""
    text = (
        "kiwi.a: &a {serve: 1, shadow: 2}\nkiwi.b: &b {serve: 3, stickiness: tenant}\n"
        "kiwi.c: {<<: [*a, *b], shadow: 9}\n"
    )
    assert load_yaml("f.yaml", text=text).data["kiwi.c"] == {
        "serve": 1,
        "stickiness": "tenant",
        "shadow": 9,
    }


def test_a_merged_key_overridden_locally_is_no_duplicate_but_a_repeat_is(tmp_path: Path) -> None:
    base = "kiwi.a: &a {serve: 1, shadow: 2}\n"
    assert load_yaml("f.yaml", text=base + "kiwi.b: {<<: *a, shadow: 5}\n").problems == ()
    doc = load_yaml("f.yaml", text=base + "kiwi.b:\n  <<: *a\n  shadow: 5\n  shadow: 6\n")
    assert [str(p) for p in doc.problems] == [
        "f.yaml:5: kiwi.b.shadow: duplicate key (first defined on line 4); keep one"
    ]


def test_errors_in_merged_values_point_at_the_line_that_spells_them(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.a: &a {serve: 1, shadow: 200}\nkiwi.b:\n  <<: *a\n  serve: 500\n")
    error = _refused(flags.load_flags_file, path)
    assert sorted((p.line, p.field) for p in error.problems) == [
        (1, "kiwi.a.shadow"),
        (1, "kiwi.b.shadow"),  # merged from line 1
        (4, "kiwi.b.serve"),
    ]


@pytest.mark.parametrize("value", ["3", "[1, 2]", "[*a, 3]"])
def test_a_merge_of_anything_but_mappings_is_located(value: str, tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(f"kiwi.a: &a {{serve: 1}}\nkiwi.b:\n  <<: {value}\n")
    error = _refused(flags.load_flags_file, path)
    assert [(p.line, p.field) for p in error.problems] == [(3, "kiwi.b")]
    assert "a mapping or a list of mappings" in error.problems[0].message


def test_merge_keys_work_in_the_orch_files(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        REGISTRY.read_text()
        + "  .base: &base {service_type: cf-text, vram_mb: 100}\n"
        + "  extra-model: {<<: *base, alias: [extra]}\n"
    )
    config = OrchConfig(ASSIGNMENTS, registry)
    assert config.registry.models["extra-model"].vram_mb == 100


RAMP = "kiwi.meal_plan: &ramp\n  serve: 0\n  shadow: 100\nkiwi.ocr:\n  <<: *ramp\n"


def test_promote_edits_a_merging_entry_and_never_the_entry_it_merges(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(RAMP + "  stickiness: user_id\n")
    FileStore(path).apply({"kiwi.ocr": Setting(5, 100)})
    state = flags.load_flags_file(path)
    assert (state.tasks["kiwi.ocr"].serve, state.tasks["kiwi.meal_plan"].serve) == (5, 0)
    assert state.tasks["kiwi.ocr"].stickiness == "user_id"


def test_x_keys_are_templates_for_merges_and_promote_leaves_them(tmp_path: Path) -> None:
    """A top-level ``x-`` key holds shared settings for merge keys; it is no task."""
    path = tmp_path / "flags.yaml"
    template = "x-ramp: &ramp {serve: 0, shadow: 100, stickiness: user_id}\n"
    path.write_text(template + "kiwi.ocr: {<<: *ramp}\nkiwi.meal_plan: {<<: *ramp, shadow: 50}\n")
    state = flags.load_flags_file(path)
    assert set(state.tasks) == {"kiwi.ocr", "kiwi.meal_plan"}
    assert (state.tasks["kiwi.meal_plan"].shadow, state.tasks["kiwi.ocr"].shadow) == (50, 100)
    FileStore(path).apply({"kiwi.ocr": Setting(5, 100)})
    state = flags.load_flags_file(path)
    assert (state.tasks["kiwi.ocr"].serve, state.tasks["kiwi.meal_plan"].serve) == (5, 0)
    assert path.read_text().startswith(template), "the template is left as it was"


def test_promote_refuses_an_edit_that_would_move_another_task(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(RAMP)
    with pytest.raises(ConfigError, match=r"would also change kiwi\.ocr"):
        FileStore(path).apply({"kiwi.meal_plan": Setting(1, 100)})
    assert path.read_text() == RAMP, "nothing written"


# -- the size cap ---------------------------------------------------------------------


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(size)
    return path


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_file_over_the_cap_is_refused_without_reading_it(name: str, tmp_path: Path) -> None:
    path = _sparse(tmp_path / "huge.yaml", 256 * MAX_BYTES)
    tracemalloc.start()
    try:
        error = _refused(LOADERS[name], path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_BYTES, f"{peak / MAX_BYTES:.0f} MiB allocated"
    [problem] = error.problems
    assert (problem.path, problem.line) == (str(path), None)
    assert problem.message.startswith("file is larger than 1 MiB, the most a config file")


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    line = "kiwi.meal_plan: {serve: 0, shadow: 100}\n"
    path.write_text(line + "#" * (MAX_BYTES - len(line) - 1) + "\n")
    assert path.stat().st_size == MAX_BYTES
    assert flags.load_flags_file(path).tasks["kiwi.meal_plan"].shadow == 100


def test_a_running_app_refuses_a_file_grown_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.meal_plan: {serve: 0, shadow: 100}\n")
    source = flags.FileFlags(path, poll_interval=0.02)
    events: list[flags.FlagEvent] = []
    source.subscribe(events.append)
    try:
        with open(path, "ab") as out:
            out.truncate(2 * MAX_BYTES)
        wait_for(lambda: any(e.level == "error" for e in events), 2)
    finally:
        source.close()
    assert source.decide("kiwi.meal_plan", None).compare, "the last good flags"
    [error] = [e for e in events if e.level == "error"]
    assert error.operation == "flags.invalid"
    assert "larger than 1 MiB" in error.message and "keeping the last good flags" in error.message


def test_a_fifo_or_device_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "flags.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer for ever
    for path in (fifo, Path("/dev/zero")):
        error = _refused(flags.load_flags_file, path)
        assert "not a regular file" in str(error)


# -- errors quote nothing from the file -----------------------------------------------

SECRET = "hunter2SECRETx9"

HOSTILE = {
    "shadow-like": f"root:$6${SECRET}$abcdef:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    "secret values": f"api_key: sk-live-{SECRET}\npassword: '{SECRET}'\nport: 5432\n",
    "nested secret": f"db:\n  password: {SECRET}\n  pin: 4242\n",
    "values in place": f"kiwi.meal_plan: {{serve: {SECRET}}}\nshim.kill: {SECRET}\n",
    "secret key": f"{SECRET}$: 1\nkiwi.a: {{stickiness: '{SECRET}!'}}\n",
    "unclosed": f"token: [{SECRET}\n",
    "alias": f"token: *{SECRET}\n",
    "tag": f"x: !{SECRET} foo\n",
    "escape": f'x: "\\q{SECRET}"\n',
    "control chars": f"\x1b[31m{SECRET}\x07: 1\n",
}


@pytest.mark.parametrize("kind", [*sorted(HOSTILE), "not utf-8"])
def test_errors_about_a_linked_file_never_quote_its_content(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    target.write_bytes(
        HOSTILE[kind].encode() if kind in HOSTILE else f"k: {SECRET}\xff".encode("latin-1")
    )
    link = tmp_path / "flags.yaml"
    link.symlink_to(target)
    for loader in LOADERS.values():
        error = _refused(loader, link)
        text = str(error)
        assert SECRET not in text and SECRET[:8] not in text, text
        assert "4242" not in text and "5432" not in text, "numbers are values too"
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), "no control characters"
        for problem in error.problems:
            assert problem.path == str(link)


def test_errors_stay_helpful_without_quoting_values(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(
        "api_key: x\nkiwi.ocr: {serve: '10', shadwo: 3}\nkiwi.a: {serve: 150}\nshim.kill: maybe\n"
    )
    found = sorted(str(p) for p in _refused(flags.load_flags_file, path).problems)
    assert found == sorted(
        [
            f"{path}:1: api_key: this key is not a task name: expected product.task in lower "
            "case, letters, digits, '_' or '-', such as kiwi.meal_plan",
            f"{path}:1: api_key: Input should be a valid dictionary or instance of TaskFlags "
            "(got a string)",
            f"{path}:2: kiwi.ocr.serve: Input should be a valid integer (got a string)",
            f"{path}:2: kiwi.ocr.shadwo: unknown field; expected one of: serve, shadow, "
            "stickiness, shadow_rate, shadow_tokens_per_hour",
            f"{path}:3: kiwi.a.serve: Input should be less than or equal to 100 (got 150)",
            f"{path}:4: shim.kill: Input should be a valid boolean (got a string)",
        ]
    )


def test_yaml_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text("kiwi.a: {serve: 1}\nkiwi.b: *nowhere\n")
    [problem] = _refused(flags.load_flags_file, path).problems
    assert str(problem) == (
        f"{path}:2: invalid YAML at column 9: found undefined alias; define its anchor (&) first"
    )
