"""Typed configs: dataclass schemas, YAML files, ``key=value`` overrides, resolved-config saving.

A schema is a (possibly nested) dataclass. ``load_config(Schema, "configs/x.yaml", ["a.b=3"])``
starts from the dataclass defaults, merges the YAML file, then the overrides; every key must
exist in the schema and every value must have the declared type, otherwise a ``ConfigError``
names the key. A YAML file may start from others (``_base_: probe.yaml``, paths relative to it, a
list merged in order) and state only what differs; the dataclass holds the defaults, so a file
states only what differs from them. The resolved config saved next to results is always complete.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import hashlib
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import ConfigError

T = TypeVar("T")

__all__ = [
    "load_config",
    "merge_dict",
    "parse_overrides",
    "to_dict",
    "config_hash",
    "save_config",
    "from_dict",
    "resolve_config_path",
    "read_config_file",
    "config_files",
    "field_help",
    "show_config",
]


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a dataclass config."""
    return dataclasses.asdict(cfg)


# Fields of a dataclass config that say where results go or how a run reports itself, never what the
# numbers are: left out of config_hash at every nesting level of a dataclass config, so the same run
# written to another folder (or with progress bars off) keeps its hash. ``num_workers`` and ``device``
# stay in: data-loader workers can change the order of random draws, and devices change float sums.
HASH_EXCLUDED = frozenset({"out", "progress", "fsync"})


def _hashable(cfg: Any) -> Any:
    """Nested dict of a dataclass config without the ``HASH_EXCLUDED`` fields (plain values as-is)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: _hashable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if f.name not in HASH_EXCLUDED}
    if isinstance(cfg, (list, tuple)):
        return [_hashable(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: _hashable(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any, length: int = 16) -> str:
    """A stable short sha256 of a config (dataclass or dict), independent of key order.

    Of a dataclass config the fields in ``HASH_EXCLUDED`` (``out``, ``progress``, ``fsync``) do not
    count, at any depth; a plain dict is hashed as given."""
    d = _hashable(cfg)
    blob = json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (``path`` may be a folder: then ``config.yaml`` inside)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        path = path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    d = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    tmp.replace(path)
    return path


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r} ({e})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is both a value and a section")
        node[parts[-1]] = value
    return out


def merge_dict(base: dict, upd: dict) -> dict:
    """Recursive dict merge (``upd`` wins); returns a new dict. An empty dict in ``upd`` replaces the
    section (``model.backbone_config={}`` clears it) instead of merging nothing into it."""
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and v and isinstance(out.get(k), dict):
            out[k] = merge_dict(out[k], v)
        else:
            out[k] = v
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and minimally coerce) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}': expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(args) != len(value):
                    raise ConfigError(f"config key '{key}': expected {len(args)} values, got {value!r}")
                return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            inner = args[0] if args else Any
            seq = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(seq) if origin is tuple else seq
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return value


def from_dict(schema: type[T], data: dict, prefix: str = "") -> T:
    """Build a dataclass from a dict, starting from its defaults; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and (
                f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
            ):  # a section given in part starts from its field's default, not from its class's
                value = merge_dict(to_dict(f.default_factory()), value)  # type: ignore[misc]
            kwargs[name] = _coerce(value, hints[name], prefix + name)
        elif dataclasses.is_dataclass(hints[name]) and f.default is dataclasses.MISSING and (
            f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ):
            kwargs[name] = from_dict(hints[name], {}, prefix + name + ".")
    try:
        return schema(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {e}") from None


REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_KEY = "_base_"  # a config file's overlay key: the file(s) it starts from, relative to itself


def _shipped_config(path: Path) -> Path | None:
    """``configs/<rest>`` inside the installed ``configs`` package (package data of the wheel; the
    source tree's ``configs/`` folder in a checkout), or None when ``path`` does not start there."""
    parts = path.parts
    if path.is_absolute() or len(parts) < 2 or parts[0] != "configs":
        return None
    from importlib.resources import files

    try:
        shipped = Path(str(files("configs").joinpath(*parts[1:])))
    except ModuleNotFoundError:
        return None
    return shipped if shipped.is_file() else None


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given when it exists; a relative ``configs/...`` path also resolves to the configs
    shipped with the package (``importlib.resources``), so the default configs work from any working
    directory and from an installed wheel."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    return _shipped_config(p) or p


def _read_mapping(p: Path) -> dict:
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return loaded


def config_files(path: str | Path) -> list[Path]:
    """The files a config file is resolved from, in merge order: its ``_base_`` files (recursively),
    then itself; ``--show-config`` names them."""
    files: list[Path] = []
    read_config_file(path, files=files)
    return files


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = (),
                     files: list[Path] | None = None) -> dict:
    """The mapping of a YAML config file with its overlays resolved.

    ``_base_: probe.yaml`` (or a list of files, merged in order) names the file(s) this one starts
    from, relative to this file's folder; this file's own keys are merged on top (``merge_dict``).
    Bases may have bases; a file reached again through its own bases is a ``ConfigError``. ``files``
    (if given) receives every file read, in merge order."""
    p = resolve_config_path(path)
    here = p.resolve()
    if here in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain[_chain.index(here):], here))
        raise ConfigError(f"{_chain[-1]}: {BASE_KEY} cycle {cycle}")
    data = _read_mapping(p)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        if files is not None:
            files.append(p)
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{p}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for b in bases:
        bp = Path(b)
        merged = merge_dict(merged, read_config_file(bp if bp.is_absolute() else p.parent / bp,
                                                     (*_chain, here), files))
    if files is not None:
        files.append(p)
    return merge_dict(merged, data)


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``schema`` <- YAML file ``path`` (its ``_base_`` overlays first) <- ``key=value``
    overrides."""
    data: dict = read_config_file(path) if path is not None else {}
    data = merge_dict(data, parse_overrides(overrides))
    return from_dict(schema, data)


# ------------------------------------------------------------------------------ --show-config: keys + help
def _source_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the class source: the comment on a field's line(s), else the comment
    lines directly above it (``x: int = 3  # what x is``)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    own_line: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
                if not tok.line[: tok.start[1]].strip():
                    own_line.add(tok.start[0])
        tree = ast.parse(src)
    except (tokenize.TokenError, SyntaxError):
        return {}
    out: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        trailing = [comments[i] for i in range(node.lineno, end + 1) if i in comments and i not in own_line]
        if trailing:
            out[node.target.id] = " ".join(trailing)
            continue
        above, i = [], node.lineno - 1
        while i in own_line:
            above.insert(0, comments[i])
            i -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


@functools.cache
def _field_help_cached(schema: type) -> tuple[tuple[str, str], ...]:
    helps: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            helps.update(_source_comments(cls))
    for f in dataclasses.fields(schema):
        text = f.metadata.get("help") if f.metadata else None
        if text:
            helps[f.name] = str(text)
    names = {f.name for f in dataclasses.fields(schema)}
    return tuple((k, v) for k, v in helps.items() if k in names)


def field_help(schema: type) -> dict[str, str]:
    """Help text per field of a dataclass schema: ``field(metadata={"help": ...})``, else the field's
    comment in the source."""
    return dict(_field_help_cached(schema))


def _plain(value: Any) -> Any:
    """A YAML-safe plain value (dataclasses -> dicts, tuples -> lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flow(value: Any) -> str:
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**9, sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text == "...":
        text = ""
    return text


def _render(cfg: Any, indent: int) -> list[str]:
    pad = " " * indent
    helps = field_help(type(cfg))
    lines: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        help_text = helps.get(f.name)
        comment = f"  # {help_text}" if help_text else ""
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines.append(f"{pad}{f.name}:{comment}")
            lines.extend(_render(value, indent + 2))
        else:
            lines.append(f"{pad}{f.name}: {_flow(value)}{comment}")
    return lines


def show_config(cfg: Any, header: str | None = None) -> str:
    """The resolved config ``cfg`` (a dataclass) as YAML, one key a line with its help as a comment.

    The text loads back (``load_config(type(cfg), file)``) into the same config.
    """
    lines = [f"# {h}" for h in (header or "").splitlines() if h.strip()]
    lines.extend(_render(cfg, 0))
    return "\n".join(lines) + "\n"
