"""The one schema toolkit of every config: a strict pydantic base, the one-line error
describer, the ``--set key.sub=value`` parser and the deep merge.

``bootleg.config`` (pretraining) and ``bootleg.probe.config`` (probes) both build on this
module; it imports nothing else from ``bootleg`` except the error type.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from bootleg.errors import BootlegError


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error -> ``field.path: what is wrong; what is expected``."""
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
    if kind == "literal_error":
        return f"{loc}: {got!r} is not allowed; expected {err['ctx']['expected']}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        key = str(ctx.get("discriminator", "")).strip("'")
        return f"{loc}.{key}: {ctx.get('tag')!r} is not allowed; expected {ctx.get('expected_tags')}"
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def validation_message(e: ValidationError, source: str) -> str:
    """``source: <first error described>`` (the one line a user sees)."""
    return f"{source}: {describe_error(e.errors()[0])}"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested dicts merge key by key. Inputs are not modified."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1); the value is parsed as YAML (a bad one stays a string)."""
    if "=" not in item:
        raise BootlegError(f"--set {item!r}: expected key.sub=value")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BootlegError(f"--set {item!r}: empty key; expected key.sub=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return parts, value


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` to the nested mapping ``raw`` in place."""
    parts, value = parse_override(item)
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``raw`` with every ``--set`` item applied in order."""
    out = copy.deepcopy(raw)
    for item in items:
        apply_override(out, item)
    return out


def flatten(data: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.depth": 12, ...}`` from a config or a nested mapping."""
    d = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
