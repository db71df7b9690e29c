"""The MLflow model registry for encoders: versions, downloads and the ``@champion`` rule.

The rule (:func:`promote`, stated in every pipeline report):

1. Only a full training run may take the alias. Smoke runs (steps or probes cut down from the
   params file) and ablation variants never do, unless the run is started with ``--promote``.
2. Versions are compared like with like: same dataset (sha256), model size, probe suite and
   metric (the probe report's headline metric). The first eligible version takes the alias; a
   later one takes it only with a strictly higher score on the same key.
3. A version measured on another key leaves the alias where it is (with ``--promote`` it takes
   the alias anyway: that is what asking means).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bootleg.export import download_model, resolve_encoder_path
from flows.tracking import client, configure

TAG_KIND = "bootleg.kind"
TAG_KEY = "bootleg.compare"  # prefix: bootleg.compare.dataset, .model, .probes, .metric
KEY_FIELDS = ("dataset", "model", "probes", "metric")
RULE = (
    "@{alias} moves only to full training runs (smoke runs and ablation variants only with --promote), "
    "compared like with like: same dataset, model size, probe suite and metric; a version takes the "
    "alias when none holds it or when it scores strictly higher than the holder on the same key."
)


class CompareKey(BaseModel):
    """What must be equal for two versions to be ranked against each other."""

    dataset: str  # name@sha256
    model: str  # size and input, e.g. micro/32px/p4
    probes: str  # sorted probe names and protocol, e.g. attentive,knn,linear_cls@quick
    metric: str  # e.g. probe.attentive.top1

    def tags(self) -> dict[str, str]:
        return {f"{TAG_KEY}.{k}": getattr(self, k) for k in KEY_FIELDS}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> CompareKey | None:
        try:
            return cls(**{k: tags[f"{TAG_KEY}.{k}"] for k in KEY_FIELDS})
        except KeyError:
            return None

    def differs(self, other: CompareKey) -> list[str]:
        return [k for k in KEY_FIELDS if getattr(self, k) != getattr(other, k)]


class Decision(BaseModel):
    """What :func:`promote` did and why (one sentence for the report)."""

    alias: str
    version: str  # the version this run registered
    champion: str | None  # the version holding the alias afterwards
    moved: bool
    reason: str


def register_encoder(run_id: str, path: str | Path, name: str, uri: str | None = None) -> str:
    """Upload the encoder (a run folder or ``encoder.safetensors``; the run folder's
    ``config.yaml`` goes along) as artifact ``encoder/`` of ``run_id`` and register it as a
    new version of model ``name``; returns the version."""
    weights = resolve_encoder_path(path)
    c = client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "encoder"
        stage.mkdir()
        shutil.copy2(weights, stage / weights.name)
        if (weights.parent / "config.yaml").is_file():
            shutil.copy2(weights.parent / "config.yaml", stage / "config.yaml")
        c.log_artifacts(run_id, str(stage), "encoder")
    try:
        c.create_registered_model(name, description="Bootleg ViT encoder (encoder.safetensors, timm keys)")
    except Exception as e:
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
    mv = c.create_model_version(name, source=f"{c.get_run(run_id).info.artifact_uri}/encoder", run_id=run_id)
    return str(mv.version)


def version_record(name: str, version: str, uri: str | None = None) -> dict[str, Any]:
    """``{"key": CompareKey | None, "kind": str, "score": float | None}`` of a version's run."""
    c = client(uri)
    mv = c.get_model_version(name, version)
    run = c.get_run(mv.run_id) if mv.run_id else None
    tags = run.data.tags if run else {}
    key = CompareKey.from_tags(tags)
    score = run.data.metrics.get(key.metric) if run and key else None
    return {"key": key, "kind": tags.get(TAG_KIND, "train"), "score": score}


def promote(
    name: str,
    alias: str,
    version: str,
    key: CompareKey,
    score: float,
    kind: str = "train",
    force: bool = False,
    uri: str | None = None,
) -> Decision:
    """Apply the rule in this module's docstring to the new ``version`` (whose run carries
    ``key``'s tags and ``score`` as metric ``key.metric``); move ``name@alias`` if it says so."""
    c = client(uri)
    try:
        holder = str(c.get_model_version_by_alias(name, alias).version)
    except Exception:
        holder = None

    def decide(moved: bool, reason: str) -> Decision:
        if moved:
            c.set_registered_model_alias(name, alias, version)
        return Decision(alias=alias, version=version, champion=version if moved else holder, moved=moved, reason=reason)

    if kind != "train" and not force:
        return decide(False, f"a {kind} run is never promoted unless started with --promote")
    if holder is None:
        return decide(True, f"no version held @{alias}")
    if holder == version:
        return decide(False, f"version {version} already holds @{alias}")
    cur = version_record(name, holder, uri)
    if cur["key"] is None or cur["score"] is None:
        return decide(True, f"version {holder} has no comparable score")
    diff = key.differs(cur["key"])
    if diff:
        what = ", ".join(f"{k} {getattr(cur['key'], k)} vs {getattr(key, k)}" for k in diff)
        if force:
            return decide(True, f"--promote: replaces version {holder}, measured on another key ({what})")
        return decide(False, f"version {holder} was measured on another key ({what}); pass --promote to replace it")
    if score > cur["score"]:
        return decide(True, f"{key.metric} {score:.2f} > {cur['score']:.2f} of version {holder}")
    return decide(False, f"{key.metric} {score:.2f} <= {cur['score']:.2f} of version {holder}, which keeps @{alias}")


def download_encoder(uri: str, tracking: str | None = None) -> Path:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/encoder`` -> a local
    folder holding ``encoder.safetensors``, from this project's tracking store (what
    ``bootleg probe`` does, with ``MLFLOW_TRACKING_URI`` set for the call)."""
    resolved = configure(tracking, check=True)
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = resolved
    try:
        return download_model(uri)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
