"""The whole description of a run, validated.

``params.yaml`` -> ``--set key.sub=value`` overrides -> deep-merged over the method's
preset (``bootleg.presets``) -> pydantic validation. Any preset value can be overridden.
Errors become one-line :class:`~bootleg.errors.BootlegError` messages naming the file,
the field and what is expected.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bootleg import presets
from bootleg.data.config import DataConfig
from bootleg.errors import BootlegError
from bootleg.probe.config import ProbeConfig

Pair = tuple[float, float]


class Strict(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PredictorConfig(Strict):
    depth: int = Field(6, ge=1)
    embed_dim: int = Field(96, ge=8)
    num_heads: int = Field(4, ge=1)
    reg_tokens: int = Field(4, ge=0)


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
    predictor: PredictorConfig = PredictorConfig()

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.img_size % self.patch_size:
            raise ValueError(f"model.img_size: {self.img_size} is not a multiple of model.patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.embed_dim: {self.embed_dim} is not divisible by model.num_heads {self.num_heads}")
        p = self.predictor
        if p.embed_dim % p.num_heads:
            raise ValueError(
                f"model.predictor.embed_dim: {p.embed_dim} is not divisible by model.predictor.num_heads {p.num_heads}"
            )
        return self

    @property
    def grid(self) -> tuple[int, int]:
        n = self.img_size // self.patch_size
        return (n, n)


class MaskingConfig(Strict):
    """``None`` fields take the sampler's defaults (``bootleg.masking.SAMPLER_DEFAULTS``)."""

    sampler: Literal["bootleg", "ijepa", "random", "cyclic", "inverse_block"] = "bootleg"
    num_blocks: int | None = Field(None, ge=1)
    block_scale: Pair | None = None
    block_aspect: Pair | None = None
    background_scale: Pair | None = None
    min_keep: int | None = Field(None, ge=1)
    mask_ratio: Pair | None = None
    inverse_block_size: int | None = Field(None, ge=1)


class TargetsConfig(Strict):
    kind: Literal["latent", "pixels"] = "latent"
    blocks: list[int] = [1, 4, 8, 12]
    mid_blocks: list[int] = []
    merge: Literal["concat", "mean"] = "concat"
    norm_pix: bool = True


class LossConfig(Strict):
    name: Literal["mse", "smooth_l1", "mse_noforward"] = "mse"
    beta: float = Field(1.0, gt=0)


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
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    progress: bool = True


class Config(Strict):
    method: Literal["bootleg", "ijepa", "mae", "data2vec"] = "bootleg"
    model: ModelConfig = ModelConfig()
    masking: MaskingConfig = MaskingConfig()
    targets: TargetsConfig = TargetsConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run: RunConfig = RunConfig()
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _cross(self) -> Config:
        depth = self.model.depth
        if self.targets.kind == "latent":
            if not self.targets.blocks and not self.targets.mid_blocks:
                raise ValueError("targets.blocks: empty; expected at least one teacher block (1-indexed)")
            for name in ("blocks", "mid_blocks"):
                bad = [b for b in getattr(self.targets, name) if not 1 <= b <= depth]
                if bad:
                    raise ValueError(f"targets.{name}: {bad} out of range; expected blocks in 1..{depth} (model.depth)")
        o = self.optim
        if o.warmup_epochs > o.epochs:
            raise ValueError(f"optim.warmup_epochs: {o.warmup_epochs} exceeds optim.epochs {o.epochs}")
        return self

    def target_dim(self) -> int:
        """Length T of one patch's target vector."""
        if self.targets.kind == "pixels":
            return self.model.patch_size**2 * 3
        n = len(self.targets.blocks) + len(self.targets.mid_blocks)
        return self.model.embed_dim * (n if self.targets.merge == "concat" else 1)


# ---------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested dicts merge key by key. Inputs are not modified."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``key.sub=value`` (value parsed as YAML) to ``raw`` in place."""
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
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "value_error":
        return str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
    if kind == "literal_error":
        return f"{loc}: {got!r} is not allowed; expected {err['ctx']['expected']}"
    return f"{loc}: {err['msg'].lower()}, got {got!r}"


def build_config(raw: dict[str, Any], source: str = "params") -> Config:
    """Merge ``raw`` over its method's preset and validate."""
    if not isinstance(raw, dict):
        raise BootlegError(f"{source}: expected a mapping of sections (method, model, ...), got {type(raw).__name__}")
    method = raw.get("method", "bootleg")
    size = (raw.get("model") or {}).get("size", "small") if isinstance(raw.get("model"), dict) else "small"
    merged = deep_merge(presets.preset(str(method), str(size)), raw)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise BootlegError(f"{source}: {_describe(e.errors()[0])}") from None


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


def flatten(cfg: Config | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.depth": 12, ...}`` — for tracking params and sweeps."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_config(cfg: Config) -> str:
    """The validated config as YAML (what ``config.yaml`` in a run folder holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
