"""Composing and validating configs.

Every node that configures behaviour is a ``_target_`` node; its keys must be keyword parameters of the
target and their values must match the target's type annotations (the torchtune ``validate`` idea). This
catches a misspelled key or a wrong type in a shipped YAML or an override before any work is done.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fairbench.errors import UserError
from fairbench.runtime import build

__all__ = ["build", "check_config", "compose_config", "config_groups", "list_options", "validate_config"]

CONFIG_MODULE = "fairbench.conf"
CONFIG_NAME = "config"
#: config groups that are not choices a user makes (Hydra's own settings)
INTERNAL_GROUPS = ("hydra",)

# Root keys outside any group and their types.
ROOT_SCHEMA: dict[str, Any] = {
    "seed": int,
    "device": str,
    "ckpt_path": str | None,
    "skip_completed": bool,
    "paths": dict,
}
# Plain (no _target_) group nodes and the function that checks their own keys; their _target_ children are
# validated against their signatures as everywhere else.
GROUP_SCHEMAS: dict[str, str] = {"backbone": "fairbench.backbones.cache.backbone_spec"}


def config_hash(cfg: DictConfig, drop: Sequence[str] = ()) -> str:
    """sha256 (16 hex digits) of the resolved config without the dotted keys in ``drop``."""
    import hashlib
    import json

    keep = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(keep, dict)
    for key in drop:
        parent, _, leaf = key.rpartition(".")
        node = keep.get(parent, {}) if parent else keep
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_dir() -> Path:
    """Folder of the shipped config tree (inside the installed package)."""
    import fairbench.conf

    return Path(fairbench.conf.__file__).parent


def config_groups() -> list[str]:
    """Every config group of the tree: each folder holding YAML options, nested ones as ``a/b``."""
    root = config_dir()
    groups = {
        path.parent.relative_to(root).as_posix() for path in root.rglob("*.yaml") if path.parent != root
    }
    return sorted(g for g in groups if g.split("/")[0] not in INTERNAL_GROUPS)


def list_options() -> dict[str, list[str]]:
    """Options of every config group, from the YAML files of the config tree."""
    root = config_dir()
    return {group: sorted(p.stem for p in (root / group).glob("*.yaml")) for group in config_groups()}


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """Compose the root config with overrides; a Hydra composition error becomes a :class:`UserError`."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(str(err)) from err
    finally:
        GlobalHydra.instance().clear()


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Override lists that together cover every value of every sweep (``a=1,2 b=x,y`` -> 3 lists, not 4).

    Used to validate a multirun before launching it without composing the whole Cartesian product.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise UserError(str(err)) from err
    fixed: list[str] = []
    sweeps: list[tuple[str, list[str]]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_interval_sweep():  # a sweeper's search range (Optuna): both bounds are checked
            bounds = override.value()  # int(interval(a,b)) keeps int bounds
            sweeps.append((key, [f"{key}={bounds.start}", f"{key}={bounds.end}"]))
        elif override.is_sweep_override():
            sweeps.append((key, [f"{key}={v}" for v in override.sweep_string_iterator()]))
        else:
            fixed.append(override.input_line)
    if not sweeps:
        return [fixed]
    firsts = [values[0] for _, values in sweeps]
    jobs = [fixed + firsts]
    for index, (_, values) in enumerate(sweeps):
        for value in values[1:]:
            jobs.append(fixed + firsts[:index] + [value] + firsts[index + 1 :])
    return jobs


# ----------------------------------------------------------------------------------------------- validation


def validate_config(cfg: DictConfig) -> list[str]:
    """Problems found in a composed config: unknown keys, wrong types, unresolvable values. Empty if fine."""
    problems: list[str] = []
    for key in cfg:
        if key == "hydra":
            continue
        node = cfg[key] if not OmegaConf.is_missing(cfg, key) else None
        if isinstance(node, DictConfig) and "_target_" in node:
            problems += _validate_target_node(node, str(key))
        elif key in ROOT_SCHEMA:
            problems += _check_value(cfg, str(key), ROOT_SCHEMA[key], str(key))
        elif key in GROUP_SCHEMAS and isinstance(node, DictConfig):
            problems += _validate_group_schema(node, str(key))
        elif isinstance(node, DictConfig):
            # a plain node such as an experiment's free-form notes: its _target_ nodes are still checked
            for path, target_node in iter_target_nodes(node, str(key)):
                problems += _validate_target_node(target_node, path)
        else:
            problems.append(f"unknown key '{key}' at the top level; known keys: {', '.join(ROOT_SCHEMA)}")
    if isinstance(cfg.get("paths"), DictConfig):
        try:
            OmegaConf.to_container(cfg.paths, resolve=True)
        except OmegaConfBaseException as err:
            problems.append(f"paths: {err}")
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` listing every problem :func:`validate_config` finds."""
    problems = validate_config(cfg)
    if problems:
        raise UserError("invalid config:\n  - " + "\n  - ".join(problems))


def iter_target_nodes(node: DictConfig, path: str) -> Iterator[tuple[str, DictConfig]]:
    """The outermost ``_target_`` nodes at or below ``node``, with their dotted paths (nested ones are
    checked by :func:`_validate_target_node`)."""
    if "_target_" in node:
        yield path, node
        return
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from iter_target_nodes(child, f"{path}.{key}")


def _validate_group_schema(node: DictConfig, path: str) -> list[str]:
    """A plain group node checked by its schema function (e.g. ``backbone``), then its ``_target_`` nodes."""
    try:
        get_object(GROUP_SCHEMAS[path])(node)
    except UserError as err:
        return [str(err)]
    problems: list[str] = []
    for child_path, target_node in iter_target_nodes(node, path):
        problems += _validate_target_node(target_node, child_path)
    return problems


def _target_signature(target: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    obj = get_object(target)
    func = obj.__init__ if inspect.isclass(obj) else obj
    params = dict(inspect.signature(obj).parameters)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to no type checks
        hints = {}
    if dataclasses.is_dataclass(obj):
        hints = {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(obj)} | hints
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return params, hints, has_var_kw


def _validate_target_node(node: DictConfig, path: str) -> list[str]:
    target = node._get_node("_target_")._value()
    try:
        params, hints, has_var_kw = _target_signature(str(target))
    except Exception as err:  # noqa: BLE001 - any import failure is a config problem here
        return [f"{path}._target_: cannot import '{target}': {err}"]
    problems: list[str] = []
    valid = sorted(name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    for key in node:
        key = str(key)
        if key.startswith("_") and key.endswith("_"):
            continue
        if key not in params and not has_var_kw:
            problems.append(f"{path}.{key}: unknown key for {target}; valid keys: {', '.join(valid)}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and "_target_" in child:
            problems += _validate_target_node(child, f"{path}.{key}")
        elif key in hints:
            problems += _check_value(node, key, hints[key], f"{path}.{key}")
    return problems


def _check_value(parent: DictConfig, key: str, annotation: Any, path: str) -> list[str]:
    try:
        value = parent[key]
    except OmegaConfBaseException as err:
        return [f"{path}: cannot resolve value: {err}"]
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if _matches(value, annotation):
        return []
    return [f"{path}: expected {_describe(annotation)}, got {value!r} ({type(value).__name__})"]


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a config value fits a type annotation (the subset of typing used in fairbench signatures)."""
    if annotation in (Any, inspect.Parameter.empty, object):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        element = args[0]
        return all(_matches(v, element) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if inspect.isclass(annotation) and dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    return True  # other classes (built by nested _target_ nodes) are checked where they are built


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
