"""params.yaml: loading, schema validation, `--set a.b=c` overrides and the params hash."""
from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from fga.errors import UserError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"
DEFAULT_PARAMS = Path("params.yaml")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=2")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of cfg with each `a.b.c=value` applied (values parsed as YAML scalars/lists)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        keys, value = _parse_override(item)
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return cfg


def _schema_at(schema: dict[str, Any], path: list[Any]) -> dict[str, Any]:
    """The sub-schema that describes the value at `path` (follows properties/additionalProperties/$ref)."""
    root = load_schema()
    node = schema
    for key in path:
        if "$ref" in node:
            node = root["$defs"][node["$ref"].split("/")[-1]]
        if isinstance(key, int):
            node = node.get("items", {})
        elif key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    if "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    return node


def validate(cfg: dict[str, Any], source: str = "params.yaml") -> None:
    """Validate against the JSON schema; the first error becomes one line naming the key and what is allowed."""
    import jsonschema

    schema = load_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    if not errors:
        return
    err = errors[0]
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(_schema_at(schema, path).get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if path else k for k in extra)
        raise UserError(f"{source}: unknown key {keys}; allowed keys here: {', '.join(allowed)}")
    if err.validator == "required":
        raise UserError(f"{source}: {where}: {err.message}")
    sub = _schema_at(schema, path)
    hint = f"; allowed values: {', '.join(map(str, sub['enum']))}" if "enum" in sub else ""
    raise UserError(f"{source}: {where} = {err.instance!r} is invalid ({err.message}){hint}")


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override and validate params.yaml; every problem is a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: params file not found; run from the project root or pass --params PATH")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}; fix the syntax (indentation, colons, quotes)") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of sections (grid, data, features, ...), got {type(cfg).__name__}")
    cfg = apply_overrides(cfg, overrides or [])
    validate(cfg, str(path))
    return cfg


def params_hash(obj: Any) -> str:
    """Short sha256 of the canonical JSON of a (sub-)config: equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
