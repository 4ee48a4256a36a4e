"""jsonargparse's nested error report shortened to the one reason that matters.

A bad value deep in a recipe (a curriculum stage's misspelt key) is reported by jsonargparse as an indented
tree: every union type it tried (`Does not validate against any of the Union subtypes`), one `- ` item per
subtype, each with the keys and classes it descended through (`Parser key "stages":`, `Problem with given
class_path '...':`), then the value given, ~1,000 characters in all. `short_reason` keeps the path to the
deepest failure (the subtype that matched the given class furthest) and its reason:
`trainer.callbacks: CurriculumCallback: stages: Stage: Option 'mixtur.a' is not accepted`. A value that none of
the union's types takes (`--trainer.precision=bf17`) is reported with the values and types they accept, not the
first type's complaint (`Expected a <class 'int'>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KEY = re.compile(r'^Parser key "(?P<name>[^"]+)":$')
CLASS = re.compile(r"^Problem with given class_path '(?:[\w.]+\.)?(?P<name>\w+)':$")
UNION = "Does not validate against any of the Union subtypes"
NONE_TYPE = "Expected a <class 'NoneType'>"
MISMATCH = ("Expected a ", "Not a valid subclass of ")
"""How a union subtype that does not take the value at all (its type, not a value inside it, is wrong) begins."""
LITERAL = re.compile(r"typing\.Literal\[([^\]]*)\]")
TYPE_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


@dataclass
class Node:
    """One line of the report and the lines indented under it."""

    text: str
    children: list[Node] = field(default_factory=list)


def parse_tree(message: str) -> list[Node]:
    """The report's lines as a forest by indentation (a `- ` item's own lines nest under it)."""
    roots: list[Node] = []
    stack: list[tuple[int, Node]] = []
    for line in message.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if text.startswith("- "):
            text, indent = text[2:], indent + 1  # the item's continuation lines sit 2 deeper than its dash
        while stack and stack[-1][0] >= indent:
            stack.pop()
        node = Node(text)
        (stack[-1][1].children if stack else roots).append(node)
        stack.append((indent, node))
    return roots


def reason_path(nodes: list[Node]) -> list[str]:
    """Keys and classes down to the deepest failure under `nodes`, then its reason."""
    if not nodes:
        return []
    head = nodes[0]
    for pattern in (KEY, CLASS):
        match = pattern.match(head.text)
        if match:
            return [match["name"], *reason_path(head.children)]
    if head.text == UNION:
        errors = next((node.children for node in nodes if node.text == "Errors:"), [])
        tried = [reason_path([item]) for item in errors if item.text != NONE_TYPE]
        taken = [path for path in tried if len(path) > 1 or not path[0].startswith(MISMATCH)]
        return max(taken, key=len) if taken else [accepted(nodes)]
    return [head.text]


def accepted(nodes: list[Node]) -> str:
    """`got VALUE; accepted: ...` from a union report's `Subtypes:` and `Given value:` lines: literal values as
    written, types by their bare names, None as null."""
    lines = {prefix: node.text.removeprefix(prefix) for node in nodes
             for prefix in ("Subtypes: ", "Given value: ") if node.text.startswith(prefix)}
    subtypes = lines.get("Subtypes: ", "").removeprefix("[").removesuffix("]")
    for pattern in (LITERAL, TYPE_NAME, MODULE_PATH):
        subtypes = pattern.sub(r"\1", subtypes)
    given = lines.get("Given value: ", "?")
    given = given if len(given) <= 60 else given[:57] + "..."
    return f"got {given}; accepted: {subtypes.replace('NoneType', 'null')}"


def short_reason(message: str) -> str:
    """The message on one line: a nested jsonargparse report as its deepest path and reason, any other
    message with its lines joined."""
    path = reason_path(parse_tree(message))
    first = message.splitlines()[0].strip() if message.strip() else ""
    if (len(path) > 1 and KEY.match(first)) or first == UNION:
        return ": ".join(path)
    return " ".join(part.strip() for part in message.splitlines() if part.strip())
