"""assignments.yaml, model_registry.yaml and flags.yaml: load, validate, locate errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim import ConfigError, OrchConfig, flags
from shim.ops.check import run_check

from .conftest import KIWI

REGISTRY = KIWI / "orch" / "model_registry.yaml"
ASSIGNMENTS = KIWI / "orch" / "assignments.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_kiwi_tasks_resolve_through_the_registry(kiwi_config: OrchConfig) -> None:
    assert kiwi_config.tasks == [
        "kiwi.meal_plan",
        "kiwi.recipe_generation",
        "kiwi.ocr",
        "kiwi.barcode_scan",
        "kiwi.recipe_scan",
        "kiwi.judge",  # the judge task (shim.Judge), no call site of kiwi's
    ]
    meal = kiwi_config.resolve("kiwi.meal_plan")
    assert meal is not None
    assert (meal.model, meal.service_type, meal.modality) == (
        "qwen2.5-3b-instruct",
        "cf-text",
        "text",
    )
    for task, service in (
        ("kiwi.ocr", "cf-vision"),
        ("kiwi.barcode_scan", "cf-vision"),
        ("kiwi.recipe_scan", "cf-docuvision"),  # kiwi's hint for recipe scans
    ):
        vision = kiwi_config.resolve(task)
        assert vision is not None and vision.service_type == service
    assert kiwi_config.resolve("kiwi.unknown") is None
    assert kiwi_config.problems() == []


def test_embedded_defaults_are_the_kiwi_example_files() -> None:
    default = OrchConfig.default()
    assert default.assignments == OrchConfig(ASSIGNMENTS, REGISTRY).assignments
    assert default.registry == OrchConfig(ASSIGNMENTS, REGISTRY).registry


def test_every_structural_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "assignments.yaml",
        (
            "assignments:\n"  # 1
            "  kiwi.meal_plan: qwen2.5-3b-instruct\n"  # 2
            "  Kiwi.Bad: x\n"  # 3
            "  kiwi.ocr: {model: m, modality: visoin}\n"  # 4
            "  kiwi.x: {model: y, colour: red}\n"  # 5
            "  kiwi.meal_plan: other\n"  # 6
        ),
    )
    with pytest.raises(ConfigError) as caught:
        OrchConfig(bad, REGISTRY)
    lines = {(p.line, p.field): p.message for p in caught.value.problems}
    assert "duplicate key (first defined on line 2)" in lines[(6, "assignments.kiwi.meal_plan")]
    assert "expected product.task in lower case" in lines[(3, "assignments.Kiwi.Bad")]
    assert "'text' or 'vision'" in lines[(4, "assignments.kiwi.ocr.modality")]
    assert lines[(5, "assignments.kiwi.x.colour")] == (
        "unknown field; expected one of: model, modality"
    )
    assert str(caught.value).startswith(f"{bad}:6: assignments.kiwi.meal_plan: duplicate key")


def test_registry_field_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        "registry.yaml",
        ("models:\n  a:\n    service_type: cf-text\n    vram_mb: -3\n  b:\n    vram_mb: 10\n"),
    )
    with pytest.raises(ConfigError) as caught:
        OrchConfig(ASSIGNMENTS, bad)
    found = [str(p) for p in caught.value.problems]
    assert f"{bad}:4: models.a.vram_mb: Input should be greater than 0 (got -3)" in found
    assert f"{bad}:5: models.b.service_type: required field is missing" in found


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "expected a mapping with a 'assignments:' key"),
        ("- a\n- b\n", 1, "expected a mapping"),
        ("assignments:\n  kiwi.a: [unclosed\n", 3, "invalid YAML"),
        ("assignments: {kiwi.a: 3}\n", 1, "Input should be a valid dictionary"),
    ],
)
def test_unusable_documents_are_located(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "a.yaml", text)
    with pytest.raises(ConfigError) as caught:
        OrchConfig(path, REGISTRY)
    assert caught.value.path == str(path)
    assert caught.value.line == line
    assert message in str(caught.value)


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as caught:
        OrchConfig(tmp_path / "nope.yaml", REGISTRY)
    assert caught.value.path.endswith("nope.yaml")


def test_vision_task_on_a_text_service_points_at_the_registry_line(tmp_path: Path) -> None:
    text = REGISTRY.read_text()
    start = text.index("  qwen2.5-vl-7b-instruct:")
    broken = text[:start] + text[start:].replace("cf-vision", "cf-text", 1)
    registry = write(tmp_path, "model_registry.yaml", broken)
    line = broken[: broken.index("cf-text", start)].count("\n") + 1
    problems = OrchConfig(ASSIGNMENTS, registry).problems()
    assert [str(p) for p in problems] == [
        f"{registry}:{line}: models.qwen2.5-vl-7b-instruct.service_type: kiwi.ocr is a "
        "vision task but its model 'qwen2.5-vl-7b-instruct' has service_type 'cf-text'; "
        "expected cf-docuvision or cf-vision"
    ]


def test_unregistered_model_and_shared_alias_are_problems(tmp_path: Path) -> None:
    assignments = write(tmp_path, "a.yaml", "assignments:\n  kiwi.a: ghost\n  kiwi.b: m1\n")
    registry = write(
        tmp_path,
        "r.yaml",
        (
            "models:\n"
            "  m1: {service_type: cf-text, vram_mb: 1, alias: [shared]}\n"
            "  m2: {service_type: vllm, vram_mb: 1, alias: [Shared, M1]}\n"
        ),
    )
    problems = [str(p) for p in OrchConfig(assignments, registry).problems()]
    assert problems[0].startswith(f"{assignments}:2: assignments.kiwi.a: model 'ghost' is not")
    assert (
        f"{registry}:3: models.m2.alias[0]: alias 'Shared' already names model 'm1'; "
        "aliases must be unique" in problems
    )
    assert any("models.m2.alias[1]: alias 'M1' already names model 'm1'" in p for p in problems)


def test_flags_file_parses_stages_and_kill_switch(tmp_path: Path) -> None:
    state = flags.load_flags_file(KIWI / "flags.yaml")
    assert state.tasks["kiwi.meal_plan"].stage == "shadow"
    assert state.tasks["kiwi.recipe_generation"].stage == "canary"
    assert state.tasks["kiwi.recipe_generation"].stickiness == "user_id"
    assert state.tasks["kiwi.ocr"].stage == "off"
    assert state.kill is False
    killed = flags.load_flags_file(write(tmp_path, "f.yaml", "shim.kill: true\n"))
    assert killed.kill is True and killed.tasks == {}
    assert [flags.stage_of(s, h) for s, h in [(0, 0), (0, 5), (1, 0), (99, 100), (100, 0)]] == [
        "off",
        "shadow",
        "canary",
        "canary",
        "live",
    ]


def test_flags_file_errors_are_all_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "flags.yaml",
        (
            "kiwi.meal_plan: {serve: 150, shadow: 100}\n"
            "kiwi.ocr: {serve: 0, shadwo: 3}\n"
            "shim.kill: maybe\n"
            "kiwi.recipe_generation: {serve: '10'}\n"
        ),
    )
    with pytest.raises(ConfigError) as caught:
        flags.load_flags_file(path)
    found = sorted(str(p) for p in caught.value.problems)
    assert found == sorted(
        [
            f"{path}:1: kiwi.meal_plan.serve: Input should be less than or equal to 100 (got 150)",
            f"{path}:2: kiwi.ocr.shadwo: unknown field; expected one of: serve, shadow, "
            "stickiness, shadow_rate, shadow_tokens_per_hour",
            f"{path}:3: shim.kill: Input should be a valid boolean (got a string)",
            f"{path}:4: kiwi.recipe_generation.serve: Input should be a valid integer "
            "(got a string)",
        ]
    )


def test_check_flags_must_name_assigned_tasks(tmp_path: Path) -> None:
    path = write(tmp_path, "flags.yaml", "kiwi.meal_plan: {shadow: 5}\nkiwi.soup: {serve: 1}\n")
    report = run_check(ASSIGNMENTS, REGISTRY, path)
    assert [str(p) for p in report.problems] == [
        f"{path}:2: kiwi.soup: kiwi.soup is not in {ASSIGNMENTS}; register it there first "
        "or remove this flag"
    ]
    assert not report.ok
