"""Settings of ``bootleg finetune``: the ``finetune:`` section (light: pydantic only, so that
:mod:`bootleg.config` may hold it beside ``probe:``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from bootleg.errors import BootlegError
from bootleg.schema import Strict, apply_overrides, describe_error

#: MAE's fine-tuning recipe (github.com/facebookresearch/mae, FINETUNE.md; He et al. 2022,
#: Table 9), by encoder width. MAE has no ViT-S; ViT-S takes ViT-B's recipe.
RECIPES: dict[str, dict[str, float]] = {
    "vit_s": {"epochs": 100, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
    "vit_b": {"epochs": 100, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
    "vit_l": {"epochs": 50, "blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.2},
}
WIDTH_RECIPE = {384: "vit_s", 768: "vit_b", 1024: "vit_l"}


class FinetuneConfig(Strict):
    """The ``finetune:`` section. Unset (``None``) recipe fields come from :data:`RECIPES` for the
    encoder's width (``recipe: auto``), the others are MAE's shared settings."""

    data: Literal["embedded", "cifar10", "fashion_mnist", "imagefolder"] | None = None
    root: str | None = None
    limit: int | None = Field(None, ge=2)
    test_limit: int | None = Field(None, ge=1)
    #: keep this fraction of every class of the (limited) train split: a fixed subset (seed 0)
    fraction: float | None = Field(None, gt=0, le=1)
    recipe: Literal["auto", "vit_s", "vit_b", "vit_l"] = "auto"
    epochs: int | None = Field(None, ge=1)
    blr: float | None = Field(None, gt=0)  # lr = blr * batch_size / 256
    layer_decay: float | None = Field(None, gt=0, le=1)
    drop_path: float | None = Field(None, ge=0, lt=1)
    warmup_epochs: float = Field(5, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    batch_size: int = Field(1024, ge=2)  # images per optimiser step over all ranks and accumulation
    accum: int = Field(1, ge=1)  # micro-batches per step
    smoothing: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.8, ge=0)
    cutmix: float = Field(1.0, ge=0)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    color_jitter: float | None = None  # timm: ignored while auto_augment is set
    reprob: float = Field(0.25, ge=0, le=1)
    eval_crop: float = Field(0.875, gt=0, le=1)
    clip_grad: float | None = Field(None, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    workers: int = Field(4, ge=0)
    checkpoint_every: int = Field(500, ge=0)  # steps; 0: epoch ends only

    def resolved(self, embed_dim: int) -> FinetuneConfig:
        """A copy with the recipe fields filled for an encoder of width ``embed_dim``."""
        name = self.recipe if self.recipe != "auto" else WIDTH_RECIPE.get(embed_dim, "vit_b")
        fill = {k: v for k, v in RECIPES[name].items() if getattr(self, k) is None}
        return self.model_copy(update={**fill, "recipe": name, "epochs": int(fill.get("epochs", self.epochs))})


def load_finetune_config(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "finetune"
) -> FinetuneConfig:
    items = [i[len("finetune.") :] if i.strip().startswith("finetune.") else i for i in overrides]
    try:
        return FinetuneConfig.model_validate(apply_overrides(raw, items))
    except ValidationError as e:
        err = dict(e.errors()[0])
        err["loc"] = ("finetune", *err["loc"])
        raise BootlegError(
            describe_error(err) if source == "finetune" else f"{source}: {describe_error(err)}"
        ) from None
