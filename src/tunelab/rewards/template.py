"""The templating of OpenAI's graders: `{{ item.field }}` (the row), `{{ sample.output_text }}` (the model's answer),
with JSON-path-like access (`item.answer.city`, `sample.output_tools[0].function.name`).

Written here because it is a few lines and no library implements OpenAI's exact rule (two namespaces, dotted and
indexed paths, a missing variable an error rather than an empty string as Jinja would make it).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunelab.errors import TunelabError

VARIABLE = re.compile(r"\{\{\s*(item|sample)\.([^}]*?)\s*\}\}")
STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
NAMESPACES = ("item", "sample")


def variables(template: str) -> list[tuple[str, str]]:
    """The (namespace, path) of each variable in `template`."""
    return [(match.group(1), match.group(2)) for match in VARIABLE.finditer(template)]


def check_template(template: str, where: str) -> None:
    """Refuse `{{ ... }}` that is not `{{ item.path }}` or `{{ sample.path }}` before any row is graded."""
    for match in re.finditer(r"\{\{(.*?)\}\}", template):
        if not VARIABLE.fullmatch(match.group(0)) or not steps(VARIABLE.fullmatch(match.group(0)).group(2)):
            raise TunelabError(f"{where}: '{match.group(0)}' is not a variable: use {{{{ item.FIELD }}}} or "
                               "{{ sample.output_text }}")


def steps(path: str) -> list[str | int]:
    found = [(key if key else int(index)) for key, index in STEP.findall(path)]
    rebuilt = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in found).lstrip(".")
    return found if rebuilt == path.replace(" ", "") else []


def lookup(value: Any, path: str) -> Any:
    """`value` followed along `path`; KeyError naming the first step that is not there."""
    for step in steps(path):
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            raise KeyError(step) from None
    return value


def render(template: str, item: dict[str, Any], sample: dict[str, Any], where: str) -> str:
    """`template` with each variable replaced by its value (a string as it is, anything else as JSON)."""
    namespaces = {"item": item, "sample": sample}

    def value(match: re.Match) -> str:
        namespace, path = match.group(1), match.group(2)
        try:
            found = lookup(namespaces[namespace], path)
        except KeyError as missing:
            raise TunelabError(f"{where}: {{{{ {namespace}.{path} }}}}: no '{missing.args[0]}' in the "
                               f"{'row' if namespace == 'item' else 'sample'}") from None
        return found if isinstance(found, str) else json.dumps(found, ensure_ascii=False)

    return VARIABLE.sub(value, template)
