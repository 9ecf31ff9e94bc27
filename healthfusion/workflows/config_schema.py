"""The config kinds of the CLI: their JSON schemas (every field described) and a check of one config file.

``healthfusion config schema KIND`` prints :func:`config_schema`; ``healthfusion config check FILE`` runs
:func:`check_config`. A field's description is, in order: its ``Field(description=...)``, its entry in
:data:`healthfusion.workflows.config_docs.FIELD_DOCS`, or its numpydoc ``Attributes`` entry in the class docstring.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from healthfusion.workflows.config import ConfigError, read_yaml_mapping
from healthfusion.workflows.config_docs import FIELD_DOCS

# kind -> (module, config class, loader); the loader resolves paths and runs the kind's own checks
CONFIG_KINDS: dict[str, tuple[str, str, str]] = {
    "train": ("healthfusion.workflows.config", "RunConfig", "load_run_config"),
    "transfer": ("healthfusion.workflows.transfer", "TransferConfig", "load_transfer_config"),
    "multitask": ("healthfusion.workflows.multitask", "MultitaskConfig", "load_multitask_config"),
    "pretrain": ("healthfusion.workflows.pretrain", "PretrainRunConfig", "load_pretrain_config"),
    "federate": ("healthfusion.workflows.federate", "FederateConfig", "load_federate_config"),
}


def config_class(kind: str) -> type[BaseModel]:
    """The pydantic class of config ``kind``; an unknown kind is a :class:`ConfigError` with a suggestion."""
    if kind not in CONFIG_KINDS:
        close = difflib.get_close_matches(kind, CONFIG_KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown config kind {kind!r}; known: {', '.join(CONFIG_KINDS)}.{hint}")
    module, cls, _ = CONFIG_KINDS[kind]
    return getattr(importlib.import_module(module), cls)


def config_schema(kind: str) -> dict[str, Any]:
    """JSON schema of config ``kind`` with a description on every field (see the module docstring)."""
    model = config_class(kind)
    schema = model.model_json_schema()
    classes = _classes(model)
    for name, node in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
        cls = classes.get(name)
        for field, prop in node.get("properties", {}).items():
            if not prop.get("description") and cls is not None:
                text = describe(cls, field)
                if text:
                    prop["description"] = text
    return schema


def undescribed_fields(kind: str) -> list[str]:
    """``Class.field`` of every field of config ``kind`` without a description (the test keeps this empty)."""
    schema = config_schema(kind)
    return [f"{name}.{field}" for name, node in [(kind, schema), *schema.get("$defs", {}).items()]
            for field, prop in node.get("properties", {}).items() if not prop.get("description")]


def describe(cls: type, field: str) -> str | None:
    """The description of ``cls.field``: FIELD_DOCS (own class, then bases), else the class docstring."""
    for klass in cls.__mro__:
        text = FIELD_DOCS.get(klass.__name__, {}).get(field)
        if text:
            return text
    for klass in cls.__mro__:
        text = _docstring_attributes(klass).get(field)
        if text:
            return text
    return None


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name -> text`` of the numpydoc ``Attributes`` section of ``cls``'s docstring (entries with a text)."""
    doc = inspect.getdoc(cls) if "__doc__" in vars(cls) else None
    match = re.search(r"^Attributes\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\n\n(?=Example)|\Z)", doc or "",
                      re.S | re.M)
    if not match:
        return {}
    out: dict[str, str] = {}
    name, lines = None, []
    for line in match.group(1).splitlines() + ["x : end"]:
        head = re.match(r"^(\w+) : ", line)
        if head:
            if name and lines:
                out[name] = " ".join(lines)
            name, lines = head.group(1), []
        elif line.startswith("    ") and name:
            lines.append(line.strip())
    return out


def _classes(model: type[BaseModel]) -> dict[str, type]:
    """Every pydantic class reachable from ``model``'s fields, by name."""
    found: dict[str, type] = {}
    todo = [model]
    while todo:
        cls = todo.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for info in cls.model_fields.values():
            todo += [t for t in _types(info.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return found


def _types(annotation) -> list:
    args = getattr(annotation, "__args__", None)
    return [annotation] if not args else [t for a in args for t in _types(a)]


def detect_kind(raw: dict) -> str:
    """The config kind whose top-level fields best cover the keys of ``raw`` (ties go to ``train``)."""
    keys = set(raw)

    def score(kind: str) -> tuple[int, int]:
        fields = set(config_class(kind).model_fields)
        return (len(keys - fields), -len(keys & fields))

    return min(CONFIG_KINDS, key=score)


def check_config(path: str | Path, kind: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, BaseModel]:
    """Validate the config file ``path`` as ``kind`` (detected from its keys when None) with that kind's loader,
    after the ``--set`` ``overrides`` (see :func:`healthfusion.workflows.config.read_yaml_config`).

    Returns
    -------
    (kind, config)

    Raises
    ------
    ConfigError
        A missing file, invalid YAML, or invalid settings, naming the file and each offending key.
    """
    path = Path(path)
    if kind is None:
        kind = detect_kind(read_yaml_mapping(path))
    config_class(kind)  # an unknown kind fails here, with a suggestion
    module, _, loader = CONFIG_KINDS[kind]
    return kind, getattr(importlib.import_module(module), loader)(path, overrides)
