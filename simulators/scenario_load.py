"""Reading a scenario file: YAML with the line of every key, the models of
``simulators.scenario``, then the cross-checks of ``simulators.scenario_checks``; every problem
becomes a ``ScenarioError`` naming its file, line and field."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simulators.scenario import Loc, Scenario
from simulators.scenario_checks import cross_check
from simulators.scenario_messages import describe_error
from simulators.scenario_yaml import (
    Marks,
    NoMarks,
    ScenarioError,
    ScenarioProblem,
    field_path,
    read_yaml,
)


def parse_scenario(data: Mapping[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate already-read data (fields, then cross-references); errors without lines."""
    return _validate(data, source, NoMarks())


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; ``ScenarioError`` names the line and field of every
    problem (YAML syntax, duplicate keys, fields, references)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            [ScenarioProblem(source, None, None, "", f"cannot read: {exc}")]
        ) from None
    data, marks = read_yaml(text, source)
    return _validate(data, source, marks)


def _validate(data: Any, source: str, marks: Marks) -> Scenario:
    def problem(loc: Loc, message: str) -> ScenarioProblem:
        line, column = marks.position(loc)
        return ScenarioProblem(source, line, column, field_path(loc), message)

    if not isinstance(data, Mapping):
        raise ScenarioError(
            [problem((), "a scenario is a mapping with name, date, classrooms, sessions...")]
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for err in errors:
            err["loc"] = _clean_loc(tuple(err["loc"]))
        problems = [problem(tuple(err["loc"]), describe_error(err, Scenario)) for err in errors]
        raise ScenarioError(_sorted(problems)) from None
    problems = [problem(loc, message) for loc, message in cross_check(scenario)]
    if problems:
        raise ScenarioError(_sorted(problems))
    return scenario


def _clean_loc(loc: Loc) -> Loc:
    """Without the tag of ``link``'s union (``devices.0.link.inline.rate_kbit``)."""
    parts = list(loc)
    for i in range(len(parts) - 1):
        if parts[i] == "link" and parts[i + 1] in ("name", "inline"):
            del parts[i + 1]
            break
    return tuple(parts)


def _sorted(problems: list[ScenarioProblem]) -> list[ScenarioProblem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.field))
