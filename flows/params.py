"""Flow parameters as pydantic models: Prefect builds the deployment forms (and validates
runs) from them, and the ``python -m flows.<name>`` command lines parse into them.

Errors become one line: :func:`validate` turns a :class:`pydantic.ValidationError` into a
:class:`~bootleg.errors.BootlegError` naming the field and what is expected.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bootleg.errors import BootlegError
from bootleg.finetune import load_finetune_config
from bootleg.masking import SAMPLERS
from bootleg.presets import METHODS

MethodName = Literal[METHODS]  # type: ignore[valid-type]
SamplerName = Literal[SAMPLERS.names()]  # type: ignore[valid-type]

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*=.*$", re.S)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

M = TypeVar("M", bound=BaseModel)


class FlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_overrides(v: list[str]) -> list[str]:
    for item in v:
        if not _OVERRIDE.match(item):
            raise ValueError(f"{item!r} is not key.sub=value (e.g. run.steps=50)")
    return v


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{v!r}: use letters, digits, '_', '-', '.'")
    return v


class PipelineParams(FlowParams):
    """One pretraining, end to end: prepare data -> pretrain -> register -> probes -> report."""

    params: str = Field("params.yaml", description="YAML config (the library's params.yaml schema)")
    overrides: list[str] = Field(
        default_factory=list, description="config overrides key.sub=value, e.g. run.steps=50 or targets.blocks=[1,4]"
    )
    out: str | None = Field(None, description="run folder (default: runs/EXPERIMENT/RUN_NAME)")
    run_name: str | None = Field(None, description="MLflow run name (default: a timestamp)")
    experiment: str = Field("bootleg", description="MLflow experiment")
    model_name: str = Field("bootleg-encoder", description="MLflow registered model for the encoder")
    alias: str = Field("champion", description="alias the promotion rule moves (see docs/workflow.md)")
    alias_metric: str = Field(
        "auto", description="probe metric that ranks versions, e.g. probe.knn.top1 ('auto': the report's headline)"
    )
    kind: Literal["auto", "train", "smoke", "ablation"] = Field(
        "auto", description="run kind for the alias rule ('auto': smoke when steps or probes are cut down)"
    )
    promote: bool = Field(False, description="let a smoke run or ablation variant take the alias")
    baseline: bool = Field(False, description="also probe a randomly initialised encoder (shown beside)")
    probes: list[str] | None = Field(None, description="probes to run (default: the library's; [] = none)")
    nproc: int = Field(1, ge=1, le=64, description="processes (GPUs); more than 1 launches torchrun")
    launcher: Literal["auto", "inprocess", "torchrun"] = Field(
        "auto", description="auto: torchrun when nproc > 1, else in this process"
    )
    register_model: bool = Field(True, description="register the encoder as a model version")
    resume: bool = Field(False, description="continue the run folder's checkpoint")
    tracking_uri: str | None = Field(None, description="MLflow server (default MLFLOW_TRACKING_URI or embedded)")
    parent_run_id: str | None = Field(None, description="nest the MLflow run under this one")
    finetune: bool = Field(
        False, description="after the probes, fine-tune the encoder end to end (bootleg finetune) into OUT/finetune"
    )
    finetune_set: list[str] = Field(
        default_factory=list,
        description="fine-tuning settings key=value (bootleg finetune --set), e.g. epochs=10, fraction=0.01, limit=5000",
    )

    @field_validator("overrides")
    @classmethod
    def _ov(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @field_validator("finetune_set")
    @classmethod
    def _ft(cls, v: list[str]) -> list[str]:
        try:
            load_finetune_config({}, _check_overrides(v))
        except BootlegError as e:
            raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _ft_on(self) -> PipelineParams:
        if self.finetune_set and not self.finetune:
            raise ValueError("finetune_set: fine-tuning settings given but finetune is false; set finetune: true")
        return self

    @field_validator("experiment", "model_name", "alias")
    @classmethod
    def _names(cls, v: str) -> str:
        return _check_name(v)


class Variant(FlowParams):
    """One row of an ablation table: a name and what it changes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    name: str = Field(..., min_length=1, description="row label, e.g. 'Blocks 1-4 (early only)'")
    method: MethodName | None = None
    targets: list[int] | None = Field(None, description="teacher blocks used as targets (1-indexed)")
    merge: Literal["concat", "mean"] | None = None
    sampler: SamplerName | None = None
    overrides: list[str] = Field(default_factory=list, description="any further key.sub=value")
    start: str | None = Field(
        None, alias="from", description="a key of the file's `bases`: the named starting point of this row"
    )
    paper: dict[str, Any] = Field(default_factory=dict, description="the paper's numbers for this row, by column")
    # informational keys of the experiment files (experiments/README.md), kept but not used
    after: str | None = None
    switch: str | None = None
    note: str | None = None
    plot: dict[str, Any] | None = None

    @field_validator("overrides")
    @classmethod
    def _ov(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("expected at least one block, numbered from 1")
        return v

    def to_overrides(self) -> list[str]:
        out = []
        if self.method:
            out.append(f"method={self.method}")
        if self.targets is not None:
            out.append(f"targets.blocks=[{','.join(map(str, self.targets))}]")
        if self.merge:
            out.append(f"targets.merge={self.merge}")
        if self.sampler:
            out.append(f"masking.sampler={self.sampler}")
        return out + list(self.overrides)

    def describe(self) -> dict[str, str]:
        return {
            "method": self.method or "",
            "targets": ",".join(map(str, self.targets)) if self.targets else "",
            "merge": self.merge or "",
            "sampler": self.sampler or "",
            "overrides": " ".join(self.overrides),
        }


class AblationParams(FlowParams):
    """Several variants through the pipeline and a comparison table (paper Tables 2-5)."""

    base: PipelineParams = Field(default_factory=PipelineParams, description="what every variant shares")
    variants: list[Variant] = Field(..., min_length=1)
    title: str = Field("Ablation", description="table caption")
    out: str | None = Field(None, description="folder for the runs and the table (default: runs/ablation/TIME)")
    shared: list[str] = Field(
        default_factory=list, description="overrides of every row, before its own (an experiment file's `base`)"
    )
    bases: dict[str, list[str]] = Field(default_factory=dict, description="named starting points rows refer to")
    columns: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the paper's columns: key -> {label, probe, data}"
    )
    references: list[dict[str, Any]] = Field(default_factory=list, description="paper-only rows")
    parallel: int = Field(1, ge=1, le=64, description="variants run at once in local processes")
    pool_deployment: str | None = Field(
        None,
        description="run each variant as a flow run of this pipeline deployment (e.g. pipeline/pipeline) on its "
        "work pool, so any worker can take it; run folders must be on storage the workers share",
    )

    @model_validator(mode="after")
    def _unique(self) -> AblationParams:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variants: duplicate name {dup[0]!r}")
        missing = sorted({v.start for v in self.variants if v.start and v.start not in self.bases})
        if missing:
            raise ValueError(f"variants: from {missing[0]!r} is not a key of bases")
        for items in (self.shared, *self.bases.values()):
            _check_overrides(items)
        return self

    def row_overrides(self, v: Variant) -> list[str]:
        """A row's overrides in the documented order: shared, its base, its own, then the run's
        ``--set`` (last, so ``--set model.size=micro`` also shrinks rows that name a size)."""
        return [*self.shared, *self.bases.get(v.start or "", []), *v.to_overrides(), *self.base.overrides]


class FloatRange(FlowParams):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("log ranges need low > 0")
        return self


class StudyParams(FlowParams):
    """An Optuna study over target layers (one boolean per teacher block) and chosen
    hyperparameters; each trial a short pretrain with probe accuracy as intermediate values."""

    params: str = Field("params.yaml", description="base YAML config")
    overrides: list[str] = Field(default_factory=list, description="overrides for every trial")
    study_name: str = Field("bootleg-targets", description="Optuna study name")
    storage: str | None = Field(
        None, description="sqlite:///... or postgresql+psycopg2://... (default: BOOTLEG_OPTUNA_STORAGE, else optuna.db)"
    )
    resume: bool = Field(False, description="add trials to an existing study of this name")
    n_trials: int = Field(8, ge=1, description="trials to finish (complete or pruned), across all workers")
    workers: int = Field(1, ge=1, le=64, description="worker processes started by this flow")
    steps: int = Field(60, ge=2, description="pretraining steps per trial")
    rounds: int = Field(3, ge=1, le=20, description="probe evaluations per trial (intermediate values)")
    search_targets: bool = Field(True, description="search which teacher blocks are targets")
    float_params: dict[str, FloatRange] = Field(
        default_factory=lambda: {"optim.lr_max": FloatRange(low=3e-4, high=3e-3, log=True)},
        description="continuous hyperparameters, config key -> range",
    )
    choice_params: dict[str, list[Any]] = Field(default_factory=dict, description="config key -> choices")
    probe: str = Field("knn", description="probe used for the objective")
    metric: str = Field("auto", description="probe metric maximised, e.g. knn.top1 ('auto': the report's headline)")
    pruner: Literal["median", "none"] = "median"
    seed: int = 0
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats")
    grace_period: int = Field(30, ge=2, description="a trial without heartbeat this long is failed and retried")
    max_retry: int = Field(2, ge=0, description="retries of a failed or killed trial")
    experiment: str = Field("bootleg-study", description="MLflow experiment (one parent run, nested trials)")
    tracking_uri: str | None = None
    out: str | None = Field(None, description="folder for trial runs (default: runs/study/STUDY_NAME)")
    objective: str | None = Field(None, description="module:function replacing the trial objective (tests)")

    @field_validator("overrides")
    @classmethod
    def _ov(cls, v: list[str]) -> list[str]:
        return _check_overrides(v)

    @field_validator("study_name", "experiment")
    @classmethod
    def _names(cls, v: str) -> str:
        return _check_name(v)


def describe_error(e: ValidationError, prefix: str = "") -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = err.get("input")
    where = f"{prefix}{loc}: " if loc else prefix
    tail = "" if err["type"] in ("value_error", "missing") or isinstance(got, dict) else f" (got {got!r})"
    return f"{where}{msg}{tail}".replace("\n", " ")


def validate(model: type[M], data: Any, prefix: str = "") -> M:
    """``model.model_validate(data)`` with a one-line :class:`BootlegError` on failure."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BootlegError(describe_error(e, prefix)) from None
