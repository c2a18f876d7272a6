"""Reading a scenario's YAML with the line of every key and list item, so an error found later
(by pydantic or a cross-check, as a location like ``("sessions", 3, "expect", "verdict")``) can
point at the line that says it.

Two YAML 1.1 surprises are turned off, because scenario files are full of clock times: ``8:30``
would be the sexagesimal integer 510 and ``2026-11-30`` a date object; here both stay text, and
the models parse them. A key given twice in one mapping is an error (YAML keeps the last one
silently, so half of a session could vanish unnoticed). A number with a leading zero (``045``)
stays text too: YAML 1.1 would read it as octal 37, and the models refuse text where a number
is meant.

A file is refused, with a line, before anything is built from it when it could exhaust the
reader: aliases that refer to themselves or multiply into more than ``MAX_VALUES`` values (a
"billion laughs"), nesting deeper than ``MAX_DEPTH``, an integer of more than
``MAX_INT_DIGITS`` digits. Keys must be names: ``1:`` or ``yes:`` as a key is an error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Loc = tuple[str | int, ...]
Position = tuple[int | None, int | None]  # 1-based line and column

_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
MAX_VALUES = 100_000  # the largest shipped scenario has a few thousand
MAX_DEPTH = 64  # a scenario nests about six deep
MAX_INT_DIGITS = 30
_KEY_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TAG_WORDS = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a yes/no value",
    "tag:yaml.org,2002:null": "null",
}
_DROPPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}


class ScenarioLoader(yaml.SafeLoader):
    """SafeLoader without sexagesimal numbers and timestamps."""

    yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML's own class attribute)
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
ScenarioLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


@dataclass(frozen=True, slots=True)
class ScenarioProblem:
    """One thing wrong with a scenario file: where (file, line, column, field) and what."""

    file: str
    line: int | None
    column: int | None
    field: str  # "sessions[3].behaviours[1].photo_elsewhere.metres"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ScenarioError(Exception):
    """A scenario file that cannot be replayed; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[ScenarioProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


def field_path(loc: Loc) -> str:
    """``("sessions", 3, "expect", "verdict")`` → ``sessions[3].expect.verdict``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class Marks(Protocol):
    def position(self, loc: Loc) -> Position:
        """The line and column that best show ``loc``: its own key or item, else its nearest
        enclosing one that exists in the file."""
        ...


class NoMarks:
    """For data that did not come from a file."""

    def position(self, loc: Loc) -> Position:
        return None, None


@dataclass
class NodeMarks:
    """Where each key path of a document is written."""

    positions: dict[Loc, Position] = field(default_factory=dict)

    def position(self, loc: Loc) -> Position:
        for end in range(len(loc), 0, -1):
            found = self.positions.get(loc[:end])
            if found is not None:
                return found
        return self.positions.get((), (None, None))

    def record(self, node: Node, loc: Loc = ()) -> None:
        if loc in self.positions:  # an alias walked again, or a cycle
            return
        self.positions[loc] = _at(node)
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                key_loc = (*loc, _key(key_node))
                self.record(value_node, key_loc)
                # A scalar value is shown where it is written; a block (mapping, list) by its key.
                if not isinstance(value_node, ScalarNode):
                    self.positions[key_loc] = _at(key_node)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.record(item, (*loc, index))


def read_yaml(text: str, source: str) -> tuple[Any, NodeMarks]:
    """The document in ``text`` and where its keys are written; ``ScenarioError`` when it
    cannot be read (a syntax error, several documents, an empty file, a duplicate key, a key
    that is not a name, aliases or nesting beyond the limits above)."""

    def fail(line: int | None, column: int | None, loc: Loc, message: str) -> ScenarioError:
        return ScenarioError([ScenarioProblem(source, line, column, field_path(loc), message)])

    loader: ScenarioLoader | None = None
    try:
        loader = ScenarioLoader(text)  # reads the text: a forbidden character stops it here
        node = loader.get_single_node()
        if node is None:
            raise fail(1, None, (), "the file is empty")
        problems = [
            *shape_problems(node),
            *(
                ((line, column), loc, message)
                for loc, line, column, message in duplicate_keys(node)
            ),
        ]
        if problems:
            raise ScenarioError(
                [
                    ScenarioProblem(source, line, column, field_path(loc), message)
                    for (line, column), loc, message in problems
                ]
            )
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as exc:
        raise fail(
            text.count("\n", 0, exc.position) + 1,
            None,
            (),
            f"YAML: the character {chr(exc.character)!r} is not allowed in YAML",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        if "block" in message or "indentation" in message:
            message += " (check the indentation above this line)"
        raise fail(line, column, (), f"YAML: {message}") from None
    except yaml.YAMLError as exc:
        raise fail(None, None, (), f"YAML: {exc}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        # PyYAML composes recursively: thousands of nested brackets exhaust Python's stack
        # before shape_problems can count them.
        mark = loader.get_mark() if loader is not None else None
        what = (
            f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(exc, RecursionError)
            else f"cannot be read ({exc})"
        )
        raise fail(mark.line + 1 if mark else None, None, (), f"YAML: {what}") from None
    finally:
        if loader is not None:
            loader.dispose()
    marks = NodeMarks()
    marks.record(node)  # after construction: merge keys (<<) are flattened into the mappings
    return data, marks


def shape_problems(node: Node) -> list[tuple[Position, Loc, str]]:
    """What would make building the document hang, crash or read wrong: an alias inside
    itself, aliases multiplying past ``MAX_VALUES``, nesting past ``MAX_DEPTH``, a huge
    integer, a key that is not a name. Each node is counted once (sizes are remembered), so
    a billion laughs costs as much as its text."""
    problems: list[tuple[Position, Loc, str]] = []
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    class TooLarge(Exception):
        pass

    def size(current: Node, loc: Loc, depth: int) -> int:
        if id(current) in sizes:
            return sizes[id(current)]
        if id(current) in open_nodes:
            problems.append((_at(current), loc, "an alias refers to the value it is inside of"))
            return 0
        if depth > MAX_DEPTH:
            # The path would be as long as the nesting: the first levels say where it is.
            problems.append((_at(current), loc[:4], f"nested deeper than {MAX_DEPTH} levels"))
            raise TooLarge
        open_nodes.add(id(current))
        total = 1
        if isinstance(current, MappingNode):
            for key_node, value_node in current.value:
                key_problem = _key_problem(key_node)
                if key_problem:
                    problems.append((_at(key_node), loc, key_problem))
                    continue
                total += size(value_node, (*loc, _key(key_node)), depth + 1)
        elif isinstance(current, SequenceNode):
            for index, item in enumerate(current.value):
                total += size(item, (*loc, index), depth + 1)
        elif current.tag == "tag:yaml.org,2002:int" and len(str(current.value)) > MAX_INT_DIGITS:
            problems.append(
                (_at(current), loc, f"a number of {len(str(current.value))} digits is too long")
            )
        open_nodes.discard(id(current))
        sizes[id(current)] = total
        if total > MAX_VALUES:
            problems.append(
                (
                    _at(current),
                    loc,
                    f"its aliases expand to more than {MAX_VALUES} values; write it out",
                )
            )
            raise TooLarge
        return total

    with contextlib.suppress(TooLarge):  # the problem that stopped the walk is recorded
        size(node, (), 0)
    return problems


def _key_problem(key_node: Node) -> str | None:
    if not isinstance(key_node, ScalarNode):
        return "a key must be a name, not a list or mapping"
    if key_node.tag in (_KEY_TAG, _MERGE_TAG):
        return None
    what = _TAG_WORDS.get(key_node.tag, key_node.tag)
    return f"a key must be a name; {key_node.value!r} reads as {what} (quote it if meant)"


def duplicate_keys(node: Node) -> list[tuple[Loc, int, int, str]]:
    """Every key written twice in one mapping, anywhere in the tree (``<<`` merges aside):
    its key path, line, column and what to say."""
    problems: list[tuple[Loc, int, int, str]] = []
    seen_nodes: set[int] = set()

    def walk(current: Node, loc: Loc) -> None:
        if id(current) in seen_nodes:
            return
        seen_nodes.add(id(current))
        if isinstance(current, MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in current.value:
                if (
                    not isinstance(key_node, ScalarNode)
                    or key_node.tag == "tag:yaml.org,2002:merge"
                ):
                    continue
                key = _key(key_node)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    problems.append(
                        (
                            (*loc, key),
                            line,
                            key_node.start_mark.column + 1,
                            f"duplicate key (also at line {first_line[key]});"
                            " YAML would silently keep only the last",
                        )
                    )
                else:
                    first_line[key] = line
                walk(value_node, (*loc, key))
        elif isinstance(current, SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*loc, index))

    walk(node, ())
    return problems


def _key(node: ScalarNode) -> str:
    return str(node.value)


def _at(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1
