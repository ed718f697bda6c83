"""params.yaml: loading, schema validation, overrides, method variants, per-dataset evaluation and the params hash.

The fga CLI reads one params file (`load_params`); Snakemake merges params.yaml with `--configfile` overlays and
`--config` values and hands its jobs the result (`snakemake_config`, then `write_resolved`). Both paths type,
validate and resolve the same way, so a job sees exactly the config the workflow planned with.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from fga.errors import UserError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"
DEFAULT_PARAMS = Path("params.yaml")
CLI_CONFIG = "--config"  # how errors name values given as `snakemake --config section='{...}'`


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def merged(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of `base` with `over` on top: mappings merge key by key, any other value is replaced."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------------------- overrides


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


# ------------------------------------------------------------------------------------ schema traversal


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    root = load_schema()
    while isinstance(node, dict) and "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    return node if isinstance(node, dict) else {}


def _schema_at(schema: dict[str, Any], path: list[Any]) -> dict[str, Any]:
    """The sub-schema that describes the value at `path` (follows properties/additionalProperties/$ref)."""
    node = schema
    for key in path:
        node = _deref(node)
        if isinstance(key, int):
            node = node.get("items", {})
        elif key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return _deref(node)


def _branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a (sub-)schema allows: its oneOf/anyOf branches, flattened, or itself."""
    node = _deref(node)
    alternatives = node.get("oneOf") or node.get("anyOf")
    return [b for alt in alternatives for b in _branches(alt)] if alternatives else [node]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", dict: "object", list: "array"}.get(type(value), "number")


def _accepts(node: dict[str, Any], kind: str) -> bool:
    """Whether the schema allows some value of JSON type `kind` here (by `type` or by an `enum` member)."""
    for branch in _branches(node):
        types = branch.get("type") or []
        if kind in ([types] if isinstance(types, str) else types):
            return True
        if any(_kind(v) == kind for v in branch.get("enum", [])):
            return True
    return False


def _is_typed(node: dict[str, Any]) -> bool:
    return any("type" in b or "enum" in b for b in _branches(node))


# ------------------------------------------------------------------------------- snakemake --config values


def _typed_value(value: Any, node: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        obj = next((b for b in _branches(node) if _accepts(b, "object")), {})
        props, extra = obj.get("properties", {}), obj.get("additionalProperties")
        return {k: _typed_value(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        arr = next((b for b in _branches(node) if _accepts(b, "array")), {})
        prefix = arr.get("prefixItems", [])
        return [_typed_value(v, prefix[i] if i < len(prefix) else arr.get("items", {})) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if not _is_typed(node):
        return parsed  # e.g. method options: read the way params.yaml's own values are read
    if parsed is None and _accepts(node, "null"):
        return None
    if _accepts(node, "string"):
        return value
    if isinstance(parsed, str) and _accepts(node, "number"):
        try:
            return float(value)  # YAML 1.1 reads '1e-3' (no dot) as a string
        except ValueError:
            return value
    return value if isinstance(parsed, str) else _typed_value(parsed, node)


def typed_config(values: dict[str, Any]) -> dict[str, Any]:
    """`snakemake --config` values with the types the schema gives them.

    Snakemake reads nested `--config section='{...}'` values as strings ('3', 'true', ['0', '1']); a string
    becomes a number, boolean, null or list where the schema expects one (and no string), and is read as
    YAML where the schema has no type for it (method options).
    """
    return _typed_value(values, load_schema())


# ------------------------------------------------------------------------------------------- validation


def _unknown_key_problem(err: Any, path: list[Any]) -> tuple[list[Any], str]:
    allowed = sorted(_schema_at(load_schema(), path).get("properties", {}))
    extra = sorted(set(err.instance) - set(allowed))
    where = ".".join(str(p) for p in path + [extra[0]])
    close = difflib.get_close_matches(str(extra[0]), allowed, n=1)
    fix = f"; did you mean {close[0]}?" if close else "; remove it or use one of those"
    return path + [extra[0]], f"unknown key {where}; allowed keys here: {', '.join(allowed)}{fix}"


def schema_problem(cfg: dict[str, Any]) -> tuple[list[Any], str] | None:
    """(path of the offending value, one-line description) of the config's first schema error, None when valid."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(load_schema()).iter_errors(cfg), key=lambda e: list(e.path))
    if not errors:
        return None
    err = errors[0]
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "<top level>"
    if err.validator == "additionalProperties":
        return _unknown_key_problem(err, path)
    if err.validator == "required":
        return path, f"{where}: {err.message}"
    if "propertyNames" in err.relative_schema_path:
        return path + [err.instance], (f"{where}: unknown name {err.instance!r}; "
                                       f"allowed: {', '.join(map(str, err.validator_value))}")
    allowed = err.validator_value if err.validator == "enum" else _schema_at(load_schema(), path).get("enum")
    hint = f"; allowed values: {', '.join(map(str, allowed))}" if allowed else ""
    return path, f"{where} = {err.instance!r} is invalid ({err.message}){hint}"


def validate_layers(cfg: dict[str, Any], layers: list[tuple[str, Any]]) -> None:
    """Validate the merged `cfg` against the JSON schema; the first error becomes one line naming the layer that set
    the offending key (`source_of`) and what is allowed."""
    problem = schema_problem(cfg)
    if problem is not None:
        raise UserError(f"{source_of(problem[0], layers)}: {problem[1]}")


def _depth(data: Any, path: list[Any]) -> int:
    """How many leading keys of `path` `data` holds."""
    depth = 0
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            break
        depth += 1
    return depth


def source_of(path: list[Any], layers: list[tuple[str, Any]]) -> str:
    """The name of the layer (params file, overlay, --config) that set the value at `path`: the last deepest one."""
    best, best_depth = layers[0][0], 0
    for name, data in layers:
        depth = _depth(data, path)
        if depth and depth >= best_depth:
            best, best_depth = name, depth
    return best


# ------------------------------------------------------------------------------ method variants, per dataset


def resolve_methods(cfg: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """cfg with every variant section (`arch: <another method>`) filled in from that method's resolved section.

    The variant's own keys win, also over the base's per-backbone values of those keys (`grm_k8: {arch: grm,
    num_prompts: 8}` has K = 8 on Swin too, where grm has 50; the variant's own per_backbone still applies), and
    mappings (per_backbone) merge key by key, over the final config (after every
    overlay and override), so a change of the base reaches its variants. `arch` becomes the architecture at the
    root of the chain: `grm_k8_no_sa: {arch: grm_k8}` over `grm_k8: {arch: grm}` builds a GRM. An `arch` naming
    no section (a registered architecture without options) inherits nothing. Resolving twice changes nothing.
    """
    methods = cfg.get("methods") or {}
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if name not in resolved:
            section = methods[name]
            base = section.get("arch") if isinstance(section, dict) else None
            if base is None or base == name or not isinstance(methods.get(base), dict):
                resolved[name] = copy.deepcopy(section)
            elif base in chain:
                raise UserError(f"{source}: methods.{name}.arch: the variants {' -> '.join(chain + (name, base))} "
                                f"inherit from each other in a circle; let one of them name an architecture")
            else:
                parent = _without_backbone_values(resolve(base, chain + (name,)), set(section) - {"arch", "per_backbone"})
                resolved[name] = merged(parent, section)
                resolved[name]["arch"] = parent.get("arch", base)
        return resolved[name]

    for method in methods:
        resolve(method, ())
    return {**cfg, "methods": resolved}


def _without_backbone_values(section: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """`section` whose per_backbone entries no longer set `keys` (entries left empty are dropped)."""
    per_backbone = section.get("per_backbone")
    if not keys or not isinstance(per_backbone, dict):
        return section
    kept = {b: {k: v for k, v in opts.items() if k not in keys} if isinstance(opts, dict) else opts
            for b, opts in per_backbone.items()}
    return {**section, "per_backbone": {b: opts for b, opts in kept.items() if opts != {}}}


def evaluation_section(cfg: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    """The `evaluate` settings of one dataset: `evaluate.per_dataset.<dataset>` merged over the global ones."""
    section = cfg.get("evaluate") or {}
    own = (section.get("per_dataset") or {}).get(dataset) if dataset is not None else None
    return merged({k: v for k, v in section.items() if k != "per_dataset"}, own)


def for_dataset(cfg: dict[str, Any], dataset: str) -> dict[str, Any]:
    """cfg as the evaluation stages of `dataset` see it: its own `evaluate` settings in place of the global ones."""
    return {**cfg, "evaluate": evaluation_section(cfg, dataset)}


# ---------------------------------------------------------------------------------------------- loading


def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping of sections; every problem is a one-line UserError."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found; run from the project root or pass its path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}; fix the syntax (indentation, colons, quotes)") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections (grid, data, features, ...), got {type(data).__name__}")
    return data


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None,
                overlays: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Read params.yaml, merge the overlay files over it in order (as Snakemake's `--configfile` does), apply the
    `--set` overrides, validate and resolve; every problem is a one-line UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: params file not found; run from the project root or pass --params PATH")
    cfg = _read_mapping(path, "params file")
    layers = [(str(path), cfg)]
    for overlay in overlays:
        layer = _read_mapping(Path(overlay), "overlay (--configfile)")
        layers.append((str(overlay), layer))
        cfg = merged(cfg, layer)
    cfg = apply_overrides(cfg, overrides or [])
    validate_layers(cfg, layers)
    return resolve_methods(cfg, ", ".join(name for name, _ in layers))


def _read_layer(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # Snakemake read it already; without it an error just names an earlier layer


def _display(path: str | Path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def snakemake_config(config: dict[str, Any], params_files: Iterable[str | Path], overlays: Iterable[str | Path],
                     cli_values: dict[str, Any]) -> dict[str, Any]:
    """The Snakemake `config` typed, validated and resolved as `load_params` does for the CLI.

    `config` is what Snakemake merged: the `configfile:` params file(s), then the `--configfile` overlays, then
    the `--config` values (`cli_values`, strings below the top level). A schema error names the layer that set
    the offending key.
    """
    cli = typed_config(dict(cli_values))
    cfg = merged(config, cli)
    layers = [(_display(p), _read_layer(Path(p))) for p in [*params_files, *overlays]] + [(CLI_CONFIG, cli)]
    validate_layers(cfg, layers)
    return resolve_methods(cfg, ", ".join(name for name, _ in layers if name != CLI_CONFIG))


def write_resolved(cfg: dict[str, Any], directory: str | Path) -> Path:
    """`<directory>/params-<content hash>.yaml` holding cfg, written atomically if absent and never changed after.

    Each config gets its own file, so a dry run or a second workflow with other params never changes the
    file a running job reads.
    """
    from fga.io import atomic_path

    text = yaml.safe_dump(cfg, sort_keys=True)
    path = Path(directory) / f"params-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path


def params_hash(obj: Any) -> str:
    """Short sha256 of the canonical JSON of a (sub-)config: equal configs, equal hashes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
