"""Read a recipe: YAML file -> dotted overrides -> validated `Recipe`, with errors a user can act on.

Errors name the key, where it is (file and line, or the command line) and, for an unknown key, the closest valid
key. pydantic does the validation; this module only turns its errors into one line.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import Recipe
from tunelab.errors import TunelabError
from tunelab.methods.registry import METHODS
from tunelab.tasks.registry import TASKS

# Sections validated by the schema of the member they name (discriminated unions built from a registry).
TAGGED = {"method": METHODS, "task": TASKS}

COMMAND_LINE = "command line"
KEY_HINT_CUTOFF = 0.75  # how alike an unknown key and a field must be to suggest the field


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe file. `output.dir` defaults to runs/<file stem>."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"{path}: recipe file not found")
    raw, lines = parse_yaml(read_recipe_text(path), str(path))
    overridden = apply_overrides(raw, overrides)
    raw.setdefault("output", {})
    if isinstance(raw["output"], dict) and raw["output"].get("dir") is None:
        raw["output"]["dir"] = str(Path("runs") / path.stem)
    return validate_recipe(raw, source=str(path), lines=lines, overridden=overridden)


def read_recipe_text(path: Path) -> str:
    content = path.read_bytes()
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise TunelabError(f"{path}:{line}: not UTF-8 (byte 0x{content[error.start]:02x} at byte offset "
                           f"{error.start}); save the recipe as UTF-8") from None


class DuplicateKey(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    PyYAML silently keeps the last of two equal keys, so a recipe with `lr:` twice trains with whichever came last
    and the user never learns the first was ignored.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges and complex keys are left to PyYAML
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise DuplicateKey(
                    problem=f"duplicate key '{key}' on lines {first_lines[key]} and {line}; keep one",
                    problem_mark=key_node.start_mark)
            first_lines[key] = line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The mapping in `text` and the line of each key path in it."""
    try:
        node = yaml.compose(text, Loader=UniqueKeyLoader)
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        kind = "" if isinstance(error, DuplicateKey) else "not valid YAML: "
        raise TunelabError(f"{where}: {kind}{getattr(error, 'problem', error)}") from None
    if raw is None:
        raise TunelabError(f"{source}: the recipe is empty")
    if not isinstance(raw, dict):
        raise TunelabError(f"{source}: a recipe is a mapping of sections (model, data, method, ...)")
    return raw, key_lines(node)


def key_lines(node: Any, prefix: tuple = ()) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            lines[path] = key_node.start_mark.line + 1
            lines.update(key_lines(value_node, path))
    return lines


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> set[tuple]:
    """Set `a.b.c=value` pairs into `raw` (values parsed as YAML); returns the key paths set."""
    overridden = set()
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep or not key.strip():
            raise TunelabError(f"{COMMAND_LINE}: override '{item}' is not of the form section.key=value")
        path = tuple(key.strip().split("."))
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        target = raw
        for depth, part in enumerate(path[:-1]):
            child = target.setdefault(part, {})
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise TunelabError(f"{COMMAND_LINE}: cannot set '{key}': '{where}' is a value, not a section")
            target = child
        target[path[-1]] = value
        overridden.add(path)
    return overridden


def validate_recipe(
    raw: dict[str, Any], source: str = "recipe", lines: dict[tuple, int] | None = None, overridden: set = frozenset()
) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        more = error.error_count() - 1
        message = describe_error(first, raw)
        path = user_path(first["loc"], raw)
        if first["type"] == "union_tag_invalid":  # the message names `<section>.name`: blame where that was set
            path = (*path, "name")
        where = where_is(path, source, lines or {}, overridden)
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise TunelabError(f"{where}: {message}{suffix}") from None


def user_path(loc: tuple, raw: dict[str, Any]) -> tuple:
    """pydantic's location without the tag it inserts for the discriminated `method` and `task` unions."""
    if len(loc) >= 2 and loc[0] in TAGGED and loc[1] in TAGGED[loc[0]]:
        return (loc[0],) + tuple(loc[2:])
    return tuple(loc)


def where_is(path: tuple, source: str, lines: dict[tuple, int], overridden: set) -> str:
    """The file line or the command line a key path came from. A section the file lacks that an override created
    (`trian.lr=1` makes a section `trian`) is the command line's doing, not the file's."""
    for depth in range(len(path), 0, -1):
        prefix = tuple(str(p) for p in path[:depth])
        if prefix in overridden:
            return COMMAND_LINE
        if prefix in lines:
            return f"{source}:{lines[prefix]}"
        if any(key[:depth] == prefix for key in overridden):
            return COMMAND_LINE
    return source


def describe_error(error: dict[str, Any], raw: dict[str, Any]) -> str:
    path = user_path(error["loc"], raw)
    dotted = ".".join(str(p) for p in path)
    kind = error["type"]
    if kind == "extra_forbidden":
        return unknown_key_message(path, raw)
    if kind == "union_tag_invalid":
        section = path[0]
        return (f"{dotted}.name: unknown {section} '{error['input'].get('name')}' "
                f"(available: {', '.join(TAGGED[section])})")
    if kind == "missing":
        return f"missing required key '{dotted}'"
    message = error["msg"].removeprefix("Value error, ")
    if kind.startswith("literal_error") or "input" in error and not isinstance(error["input"], dict):
        return f"{dotted}: {message} (got {error['input']!r})"
    return f"{dotted}: {message}" if dotted else message


def unknown_key_message(path: tuple, raw: dict[str, Any]) -> str:
    key = str(path[-1])
    dotted = ".".join(str(p) for p in path)
    section_model = model_at(path[:-1], raw)
    valid = list(section_model.model_fields) if section_model else []
    if path[0] in TAGGED and len(path) == 2:
        members = TAGGED[path[0]]
        owners = [name for name, member in members.items() if key in member.config_class.model_fields]
        if owners:
            current = section_name(raw, path[0])
            return f"'{dotted}' is an option of {path[0]} '{owners[0]}', not of '{current}'"
    hint = closest_key(key, section_model) if section_model else None
    suggestion = f"; did you mean '{'.'.join(map(str, path[:-1] + (hint,)))}'?" if hint else ""
    choices = f" (valid keys here: {', '.join(valid)})" if valid and not hint else ""
    return f"unknown key '{dotted}'{suggestion}{choices}"


def closest_key(key: str, model: type[BaseModel]) -> str | None:
    """The field `key` was most likely meant as: by spelling (`lrr` -> `lr`), or by the words of a field's
    description (`lerning_rate` -> `lr`, "Peak learning rate."), since a short name shares few letters with the long
    name a user types from memory."""
    words = " ".join(part for part in key.lower().replace("-", "_").split("_") if part)
    best, best_score = None, 0.0
    for name, field in model.model_fields.items():
        score = difflib.SequenceMatcher(None, key, name).ratio()
        described = re.findall(r"[a-z0-9]+", (field.description or "").lower())
        width = len(words.split())
        for start in range(len(described) - width + 1):
            phrase = " ".join(described[start:start + width])
            score = max(score, difflib.SequenceMatcher(None, words, phrase).ratio())
        if score > best_score:
            best, best_score = name, score
    return best if best_score >= KEY_HINT_CUTOFF else None


def model_at(path: tuple, raw: dict[str, Any]) -> type[BaseModel] | None:
    """The schema class that validates the section at `path`."""
    model: type[BaseModel] = Recipe
    for part in path:
        if part in TAGGED and model is Recipe:
            name = section_name(raw, part)
            if name not in TAGGED[part]:
                return None
            model = TAGGED[part][name].config_class
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def section_name(raw: dict[str, Any], section: str) -> str:
    """The member a `method` or `task` section names (its default when it names none)."""
    from tunelab.config.schema import DEFAULT_METHOD
    from tunelab.tasks.registry import DEFAULT_TASK

    default = {"method": DEFAULT_METHOD, "task": DEFAULT_TASK}[section]
    value = raw.get(section)
    if isinstance(value, str):
        return value
    return value.get("name", default) if isinstance(value, dict) else default


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
