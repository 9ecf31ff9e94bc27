"""Reading a config file (:func:`read_yaml_config`, the loader of every config kind) with the command line's
settings: ``--set a.b=VALUE`` overrides at dotted keys and ``--quick``'s smoke-run settings (applied to the file's
mapping before validation), validation errors that name the closest known key, and paths resolved against the
config file's folder after ``${VAR:-default}`` environment references are expanded (:func:`resolve_paths`)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The run configuration file is missing, not YAML, or does not validate."""


def parse_override(item: str) -> tuple[str, Any]:
    """``"a.b=VALUE"`` -> ``("a.b", VALUE read as YAML)``; an empty value is None.

    Raises
    ------
    ConfigError
        Without ``=`` or a key, or with a value that is not YAML.
    """
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key, e.g. --set training.max_epochs=5; got {item!r}.")
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value {value!r} is not YAML ({yaml_problem(exc)}); quote text with "
                          "spaces or brackets.") from exc


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating missing sections (a list item by index).

    Raises
    ------
    ConfigError
        When a part of ``key`` names a setting that is a value, not a section, or a list index out of range.
    """
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"--set {key}: {where} is a list of {len(node)} item(s); give an index 0-"
                                  f"{len(node) - 1} after it, e.g. {where}.0.")
            index = int(part)
            if last:
                node[index] = value
            else:
                node[index] = {} if node[index] is None else node[index]
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {where} is a value ({node!r}), not a section with keys.")


def apply_quick(raw: dict, schema: type[BaseModel]) -> dict:
    """``raw`` with the schema's ``QUICK`` settings (``{dotted key: value}``; a ``*`` part stands for every item of
    a list) and ``quick: true``. A setting inside an optional section the config leaves out (``ensemble:``,
    ``data.test:``) is skipped, so a smoke run never switches on what the real run does not do."""
    raw = dict(raw)
    raw["quick"] = True
    for key, value in getattr(schema, "QUICK", {}).items():
        for concrete in _expand(raw, key.split(".")):
            if _present_or_defaulted(raw, schema, concrete):
                _materialise(raw, schema, concrete[0])
                set_dotted(raw, ".".join(concrete), value)
    return raw


def _materialise(raw: dict, schema: type[BaseModel], name: str) -> None:
    """Write a section the file leaves out as its default, so that a quick setting inside it changes only that
    setting (a workflow's ``training:`` default is its preset, not the generic defaults a partial section gets)."""
    field = _field(schema, name)
    if name in raw or field is None or field.default_factory is None:
        return
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        raw[name] = default.model_dump(mode="json")


def _expand(raw: Any, parts: list[str], done: tuple[str, ...] = ()) -> list[list[str]]:
    """The concrete keys of a ``QUICK`` key: ``*`` replaced by each index of the list it stands in."""
    if not parts:
        return [list(done)]
    head, rest = parts[0], parts[1:]
    if head == "*":
        if isinstance(raw, list):
            return [k for i, item in enumerate(raw) for k in _expand(item, rest, (*done, str(i)))]
        if isinstance(raw, dict) and raw:  # one mapping where a list is allowed (pretrain's data:)
            return _expand(raw, rest, done)
        return []
    child = raw.get(head) if isinstance(raw, dict) else None
    return _expand(child if child is not None else {}, rest, (*done, head))


def _present_or_defaulted(raw: dict, schema: type[BaseModel], parts: list[str]) -> bool:
    """Whether every section on the way to ``parts[-1]`` is in ``raw`` or defaults to a section (not None)."""
    node: Any = raw
    model: Any = schema
    for part in parts[:-1]:
        if isinstance(node, list):  # a list index: the item has the list's section type
            node = node[int(part)]
            continue
        given = node.get(part) if isinstance(node, dict) else None
        field = _field(model, part)
        if given is None and (field is None or field.default is None and not field.is_required()):
            return False
        node, model = given, _section_type(field.annotation) if field is not None else None
    return True


def _field(model: Any, name: str):
    fields = getattr(model, "model_fields", None)
    return fields.get(name) if isinstance(fields, dict) else None


def _section_type(annotation: Any) -> Any:
    """The config class inside an annotation (``X``, ``X | None``, ``list[X]``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def problem_text(schema: type[BaseModel], error: Any) -> str:
    """One validation error as ``a.b: message``; an unknown key with the closest key its section knows."""
    loc = [str(p) for p in error["loc"]]
    text = f"{'.'.join(loc)}: {error['msg']}"
    if error.get("type") != "extra_forbidden":
        return text
    model: Any = schema
    for part in loc[:-1]:
        if part.isdigit():
            continue
        field = _field(model, part)
        model = _section_type(field.annotation) if field is not None else None
    known = list(getattr(model, "model_fields", {}) or {})
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{'.'.join(loc)}: unknown key; {hint}known keys here: {', '.join(known)}" if known else text


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML parse error: the problem and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return problem if mark is None else f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def read_yaml_config(path: str | Path, schema: type[M], overrides: Sequence[str] = (), out: str | Path | None = None,
                     quick: bool = False) -> M:
    """Read ``path`` as YAML, apply the command line's settings and validate it against the pydantic ``schema``
    (unknown keys are errors, with a "did you mean"); the shared loader of every ``--config`` file.

    In order: the file's mapping; with ``quick`` (or ``quick: true`` in the file), the schema's ``QUICK`` smoke-run
    settings (:func:`apply_quick`) and ``quick: true``; each ``overrides`` item ``a.b.c=VALUE`` (VALUE read as
    YAML: ``2`` a number, ``[0, 1]`` a list, ``null`` None; a list item by index, ``data.0.path``), later items
    winning, so ``--set`` beats ``--quick``; ``out`` (the command line's ``--out``, relative to the working
    directory) replaces the file's ``out:``. A relative ``out:`` of the file is resolved against the file's folder,
    like its data paths.

    Raises
    ------
    ConfigError
        A missing file, invalid YAML, a document that is not a mapping, a malformed override, or invalid settings
        (each offending key named, as ``section.key: message``, an unknown key with the closest known one); a
        ``ValueError`` raised by the schema's validators is reported the same way.
    """
    path = Path(path)
    return validate_mapping(read_yaml_mapping(path), schema, path.parent, str(path), overrides, out, quick)


def read_yaml_mapping(path: str | Path) -> dict:
    """The mapping of settings a YAML config file holds, as written (no overrides, no validation).

    Raises
    ------
    ConfigError
        A missing file, invalid YAML (with the line), or a document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings; got {type(raw).__name__}.")
    return raw


def validate_mapping(raw: Any, schema: type[M], base: Path, where: str, overrides: Sequence[str] = (),
                     out: str | Path | None = None, quick: bool = False) -> M:
    """Validate the settings mapping ``raw`` (a config file's, or one built in Python) against ``schema`` after
    ``quick`` and ``overrides`` as :func:`read_yaml_config` applies them; a relative ``out:`` is resolved against
    ``base`` and ``out`` replaces it. ``where`` (a file name) starts every error message.

    Raises
    ------
    ConfigError
        ``raw`` is not a mapping, a malformed override, or invalid settings (each offending key named).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of settings; got {type(raw).__name__}.")
    raw = dict(raw)
    if quick or raw.get("quick") is True:
        raw = apply_quick(raw, schema)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    try:
        config = schema.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(problem_text(schema, e) for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from exc
    if "out" in type(config).model_fields:
        resolve_paths(base, config, ("out",))
        if out is not None:
            config.out = Path(out).expanduser().resolve()
    return config


def expand_environment(text: str, where: str = "a config path") -> str:
    """``text`` with each ``${NAME}`` replaced by environment variable NAME and each ``${NAME:-default}`` by NAME
    or, when it is unset or empty, ``default`` (as in a shell), e.g. ``${HEALTHFUSION_SHARED_DATA:-../shared/data}``.

    Raises
    ------
    ConfigError
        ``${NAME}`` without a default while NAME is unset (``where`` names the setting).
    """
    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is None:
            raise ConfigError(f"{where} uses ${{{name}}}, which is not set; set it, or write ${{{name}:-DEFAULT}}.")
        return default

    return _ENV_REFERENCE.sub(value, text)


def resolve_paths(base: Path, obj: Any, attrs: Sequence[str]) -> None:
    """Make each relative path attribute ``attrs`` of ``obj`` (a config section; None allowed) relative to
    ``base`` (the config file's folder); environment references (:func:`expand_environment`) and ``~`` are
    expanded first."""
    if obj is None:
        return
    for attr in attrs:
        value = getattr(obj, attr)
        if value is not None:
            value = Path(expand_environment(str(value), f"{type(obj).__name__}.{attr}")).expanduser()
            setattr(obj, attr, value if value.is_absolute() else (base / value).resolve())
