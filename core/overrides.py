"""Layer YAML files and `key=value` overrides on top of the config dataclasses, and back.

Keys are dotted paths that match the dataclass fields (`model.fusion.num_layers=2`); values are
parsed as YAML scalars (`1e-4`, `true`, `[0.9, 0.99]`) and then checked against the field's type,
so a typo in a key or a wrong type fails with the key's name instead of being ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mmfer.core.errors import ConfigError


def to_dict(cfg: Any) -> dict:
    """Nested plain dict of a config (tuples as lists), ready for YAML/JSON."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return plain(cfg)


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in nested.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A new config with each dotted key set; `__post_init__` checks run on every rebuilt level."""
    for key, value in overrides.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(obj: Any, parts: list[str], value: Any, full_key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = parts[0].replace("-", "_")
    if name not in fields:
        raise ConfigError(f"unknown config key {full_key!r}{_nearest_key_hint(obj, parts, full_key)}")
    hints = typing.get_type_hints(type(obj))
    if len(parts) > 1:
        child = getattr(obj, name)
        if not dataclasses.is_dataclass(child):
            raise ConfigError(f"config key {full_key!r}: {name} has no sub-keys")
        new_value = _set(child, parts[1:], value, full_key)
    elif dataclasses.is_dataclass(getattr(obj, name)):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {full_key!r} is a section; give a mapping")
        new_value = apply_overrides(getattr(obj, name), flatten(value))
    else:
        new_value = coerce(value, hints[name], full_key)
    try:
        return dataclasses.replace(obj, **{name: new_value})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config key {full_key!r}: {err}") from err


def _nearest_key_hint(obj: Any, parts: list[str], full_key: str) -> str:
    """"(did you mean training.max_epochs?)" for a key one or two letters off a real one, dotted as the user
    wrote it; a section's leaf keys are offered under their section (`training.max_epoch` -> `training.max_epochs`)."""
    import difflib

    section = full_key[:len(full_key) - len(".".join(parts))]   # the dotted part already matched, e.g. "training."
    keys = [section + key for key, *_ in leaf_fields(type(obj))]
    close = difflib.get_close_matches(full_key.replace("-", "_"), keys, n=1, cutoff=0.75)
    if not close:   # a misspelt section or a leaf given without its section: match on the last part alone
        close = [k for k in keys if k.rsplit(".", 1)[-1] == parts[-1].replace("-", "_")][:2]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert `value` to `annotation`. A string for a string field (a path, a glob, a name) is taken
    literally: `'*-08'`, `data #1`, `0123`, `no` stay as typed. Other strings are parsed as YAML scalars
    (`1e-4`, `true`, `[0.9, 0.99]`) first."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(value, str):
        if _is_string_field(annotation) or (origin is Literal and value in args):
            return value
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError as err:
            raise ConfigError(f"config key {key!r}: cannot read {value!r} ({err.problem})") from None
        value = value if isinstance(parsed, (dict,)) else parsed
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if str(value) in [str(a) for a in args]:
            return next(a for a in args if str(a) == str(value))
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config key {key!r} needs {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, str):
        try:   # PyYAML reads "1e-4" (no dot) as a string: the design guide's own YAML writes lr that way
            value = float(value)
        except ValueError:
            pass
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if annotation is str:
        if value is None:
            raise ConfigError(f"config key {key!r} must be a string")
        return str(value)
    return value


def _is_string_field(annotation: Any) -> bool:
    """str, or str | None."""
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and str in args and \
        all(a in (str, type(None)) for a in args)


def load_yaml_overrides(path: str | Path, cfg_type: type) -> dict[str, Any]:
    """Flat overrides from a YAML file. The guide's `training:` block is accepted as written; its
    scheduler name and `mixed_precision` keys map onto the same fields."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cfg_type)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {unknown}; known: {sorted(known)}")
    return flatten(data)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's plain data (safe loading: a `!!python` tag builds nothing).

    Raises:
        ConfigError: a syntax error or a tag safe loading refuses, naming the file, line and column.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.constructor.ConstructorError as err:
        tag = str(err.problem).split("tag '", 1)[-1].rstrip("'").replace("tag:yaml.org,2002:", "!!")
        raise ConfigError(f"{path}{_where(err)}: the tag {tag} is not allowed (config files hold plain values; "
                          "no Python objects are ever built); remove the tag") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}{_where(err)}: not valid YAML ({problem}); fix the file") from None


def _where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def parse_key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. training.max_epochs=30)")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring under each dataclass field (litgpt style), for --help."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """(dotted key, type, default, doc) for every leaf field of a config class."""
    out = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(leaf_fields(type(value), f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", hints[f.name], value, docs.get(f.name, "")))
    return out
