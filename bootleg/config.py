"""The whole description of a run, validated.

``params.yaml`` -> ``--set key.sub=value`` overrides -> merged over the method's preset
(``bootleg.presets``) -> pydantic validation. The swappable parts (mask sampler, target kind,
predictor, loss) are registered classes selected by name (discriminated unions): their
registries, not this module, list the names. Errors become one-line
:class:`~bootleg.errors.BootlegError` messages naming the file, the field and what is expected.

Merging follows the paper's recipes: the method's preset gives every method-specific value
(sampler, targets, loss, predictor, optimiser, augmentation) for the model size; a file or
``--set`` overrides only the fields it names. A section whose registered kind changes
(``masking.sampler: random`` over a preset's ``bootleg``) replaces the preset's section instead
of merging into it. Method-specific values of a file live under ``per_method.<method>`` and
apply only when that method runs. Overriding ``optim.epochs`` alone scales the preset's warmup
with it (Appendix B: "we scale the warmup duration based on the total number of epochs").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from bootleg import presets
from bootleg.data.config import DataConfig
from bootleg.errors import BootlegError
from bootleg.finetune.config import FinetuneConfig
from bootleg.losses import LOSSES, MSE
from bootleg.masking import MaskingConfig
from bootleg.masking.bootleg import BootlegParams
from bootleg.models import PREDICTORS, ViTPredictorConfig
from bootleg.probe.config import ProbeConfig
from bootleg.schema import Strict, apply_override, deep_merge, describe_error, flatten
from bootleg.targets import TARGETS, LatentTargets

__all__ = ["Config", "apply_override", "build_config", "deep_merge", "dump_config", "flatten", "load_config"]

Pair = tuple[float, float]
#: the fields that select a registered class, per section path
DISCRIMINATORS: dict[tuple[str, ...], str] = {
    ("masking",): "sampler",
    ("targets",): "kind",
    ("loss",): "name",
    ("model", "predictor"): "kind",
}


class ModelConfig(Strict):
    size: Literal["micro", "tiny", "small", "base", "large"] = "small"
    img_size: int = Field(224, ge=8)
    patch_size: int = Field(16, ge=1)
    embed_dim: int = Field(384, ge=8)
    depth: int = Field(12, ge=1)
    num_heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    cls_token: bool = True
    reg_tokens: int = Field(4, ge=0)
    drop_path: float = Field(0.0, ge=0, lt=1)
    init: Literal["xavier", "ijepa"] = "xavier"  # ijepa: trunc-normal 0.02 with per-layer rescale
    ema_encoder: bool = False  # keep (and export) an EMA encoder even if the targets need no teacher
    predictor: PREDICTORS.union() = ViTPredictorConfig()  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.img_size % self.patch_size:
            raise ValueError(f"model.img_size: {self.img_size} is not a multiple of model.patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim: {self.embed_dim} is not divisible by model.num_heads {self.num_heads}")
        self.predictor.check()
        return self

    @property
    def grid(self) -> tuple[int, int]:
        n = self.img_size // self.patch_size
        return (n, n)


class OptimConfig(Strict):
    epochs: int = Field(600, ge=1)
    warmup_epochs: float = Field(105, ge=0)
    batch_size: int = Field(2048, ge=1)
    accum_steps: int = Field(1, ge=1)
    lr_ref_batch: int | None = Field(2048, ge=1)
    lr_init: float = Field(1e-4, ge=0)
    lr_max: float = Field(3e-3, ge=0)
    lr_final: float = Field(1e-4, ge=0)
    wd_init: float = Field(0.05, ge=0)
    wd_final: float = Field(0.05, ge=0)
    betas: Pair = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    ema_init: float = Field(0.9985, ge=0, le=1)
    ema_final: float = Field(0.9985, ge=0, le=1)
    clip_grad: float | None = Field(None, gt=0)


class RunConfig(Strict):
    seed: int = 0
    out: str = "runs/default"
    steps: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    monitor_every: int = Field(100, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    #: torch.compile backend; "eager" only traces (tests count recompilations with it)
    compile_backend: str = "inductor"
    #: CUDA graphs (torch.compile's "reduce-overhead" mode) for small models; needs static
    #: shapes, i.e. masking.bucket set
    cuda_graphs: bool = False
    #: float8 matmuls in the student and predictor through torchao (H100-class GPUs)
    float8: bool = False
    #: scaled-dot-product attention backend; auto lets PyTorch choose
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    progress: bool = True


class Config(Strict):
    method: Literal["bootleg", "ijepa", "mae", "data2vec"] = "bootleg"
    #: M masks per image per step, one teacher pass for all M (data2vec 2.0's multi-mask training)
    mask_repeats: int = Field(1, ge=1)
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = BootlegParams()
    targets: TARGETS.union() = LatentTargets()  # type: ignore[valid-type]
    loss: LOSSES.union() = MSE()  # type: ignore[valid-type]
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    probe: ProbeConfig = ProbeConfig()
    #: settings of ``bootleg finetune`` and of the pipeline's ``finetune-encoder`` task
    finetune: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="after")
    def _cross(self) -> Config:
        resolved = self.targets.resolve(self.model.depth)
        if resolved is not self.targets:
            object.__setattr__(self, "targets", resolved)  # no re-validation loop
        self.targets.check(self.model.depth)
        if self.run.cuda_graphs and (not self.run.compile or self.masking.bucket is None):
            raise ValueError("run.cuda_graphs: needs run.compile=true and masking.bucket set (static shapes)")
        o = self.optim
        if o.warmup_epochs > o.epochs:
            raise ValueError(f"optim.warmup_epochs: {o.warmup_epochs} exceeds optim.epochs {o.epochs}")
        return self

    def target_dim(self) -> int:
        """Length T of one patch's target vector."""
        return self.targets.dim(self.model.embed_dim, self.model.patch_size)


# ---------------------------------------------------------------- loading


def _merge_section(base: Any, over: Any, path: tuple[str, ...]) -> Any:
    """Deep merge in which a changed discriminator replaces the whole section."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    key = DISCRIMINATORS.get(path)
    if key is not None and key in over and over[key] != base.get(key):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge_section(out[k], v, (*path, k)) if k in out else copy.deepcopy(v)
    return out


def merge_over_preset(raw: dict[str, Any], source: str = "params") -> dict[str, Any]:
    """The full raw config of ``raw``: its method's preset (for its model size), then the
    ``per_method`` entry of that method, then the rest of ``raw``."""
    raw = copy.deepcopy(raw)
    method = str(raw.get("method", "bootleg"))
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    size = str(model.get("size", "small"))
    per_method = raw.pop("per_method", None) or {}
    if not isinstance(per_method, dict):
        raise BootlegError(f"{source}: per_method: expected a mapping of method names to sections")
    unknown = [m for m in per_method if m not in presets.METHODS]
    if unknown:
        raise BootlegError(
            f"{source}: per_method.{unknown[0]}: unknown method; expected one of {', '.join(presets.METHODS)}"
        )
    base = presets.preset(method, size)
    scoped = per_method.get(method) or {}
    user = _merge_section(scoped, raw, ())
    merged = _merge_section(base, user, ())
    # Appendix B: warmup scales with the run's length in epochs
    o_user, o_base = user.get("optim") or {}, base.get("optim") or {}
    if "epochs" in o_user and "warmup_epochs" not in o_user and o_base.get("epochs"):
        merged["optim"]["warmup_epochs"] = o_base["warmup_epochs"] * o_user["epochs"] / o_base["epochs"]
    return merged


def build_config(raw: dict[str, Any], source: str = "params") -> Config:
    """Merge ``raw`` over its method's preset and validate."""
    if not isinstance(raw, dict):
        raise BootlegError(f"{source}: expected a mapping of sections (method, model, ...), got {type(raw).__name__}")
    merged = merge_over_preset(raw, source)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise BootlegError(f"{source}: {describe_error(_untagged(e.errors()[0], merged))}") from None


def _untagged(err: Any, merged: dict[str, Any]) -> dict[str, Any]:
    """Drop the union tag pydantic puts in an error's location (``targets.pixels.blocks`` ->
    ``targets.blocks``) and say which kind was selected."""
    loc = list(err["loc"])
    for path, key in DISCRIMINATORS.items():
        n = len(path)
        node: Any = merged
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if tuple(loc[:n]) == path and len(loc) > n and isinstance(node, dict) and loc[n] == node.get(key):
            err = {**err, "loc": (*loc[:n], *loc[n + 1 :])}
            if err["type"] == "extra_forbidden":
                where = ".".join(path)
                err = {
                    **err,
                    "type": "value_error",
                    "ctx": {
                        "error": f"{'.'.join(map(str, err['loc']))}: unknown key for {where}.{key}={node.get(key)}"
                    },
                }
            break
    return err


def read_params(path: str | Path) -> dict[str, Any]:
    """Read a params YAML file as a mapping of sections; one-line errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise BootlegError(f"{p}: no such params file; expected a YAML file such as params.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BootlegError(f"{p}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise BootlegError(f"{p}: expected a mapping of sections (method, model, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (YAML; ``None`` = defaults), apply ``overrides``, validate."""
    raw = read_params(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return build_config(raw, str(path) if path is not None else "defaults")


def dump_config(cfg: Config) -> str:
    """The validated config as YAML (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
