"""Settings of the frozen-backbone probes: the ``probe:`` section of ``params.yaml``.

:mod:`bootleg.config` imports this module (``Config.probe``); it imports only
:mod:`bootleg.schema` (the shared strict base), never anything above it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bootleg.schema import Strict

Pair = tuple[float, float]

#: classification probes (paper Sec. 5.1); the default suite
CLASSIFY_PROBES = ("linear_patch", "linear_cls", "attentive", "knn")
#: dense probes (paper Sec. 5.2), scored by mIoU
SEGMENT_PROBES = ("seg_knn", "seg_linear", "seg_block")
PROBE_NAMES = CLASSIFY_PROBES + SEGMENT_PROBES
#: names that stand for several probes in ``--probes`` / ``probe.probes``
PROBE_GROUPS: dict[str, tuple[str, ...]] = {
    "all": PROBE_NAMES,
    "classify": CLASSIFY_PROBES,
    "segment": SEGMENT_PROBES,
}


def expand_probe_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """``["classify", "seg_knn"]`` -> probe names in canonical order, no duplicates.

    Items may also be comma-separated (``"knn,attentive"``). Raises ``ValueError`` naming the
    first unknown item and the allowed names.
    """
    want: set[str] = set()
    for item in names:
        for name in (s.strip() for s in str(item).split(",")):
            if not name:
                continue
            if name in PROBE_GROUPS:
                want.update(PROBE_GROUPS[name])
            elif name in PROBE_NAMES:
                want.add(name)
            else:
                allowed = ", ".join([*PROBE_NAMES, *PROBE_GROUPS])
                raise ValueError(f"probe {name!r} is unknown; expected one of {allowed}")
    if not want:
        raise ValueError("no probe selected; expected at least one probe name")
    return [p for p in PROBE_NAMES if p in want]


class SweepConfig(Strict):
    """A grid of ``len(lrs) x len(wds)`` heads trained together (AdamW, cosine LR decay
    after a linear warm-up); the best head on the validation split is reported on test.

    Subclasses set each probe's defaults, so a partial override (``linear.epochs=5``) keeps
    the other fields.
    """

    lrs: list[float] = Field([1e-2, 3e-2, 1e-1, 3e-1, 1.0], min_length=1)
    wds: list[float] = Field([0.0, 0.01, 0.1, 0.4, 0.8], min_length=1)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    warmup_epochs: float = Field(0.0, ge=0)

    @field_validator("lrs", "wds")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError(f"{v}: expected non-negative values")
        return v

    @model_validator(mode="after")
    def _warmup(self) -> SweepConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        return self


class LinearSweep(SweepConfig):
    """``linear_patch`` and ``linear_cls``: 5 x 5 grid, 20 epochs (paper)."""


class AttentiveSweep(SweepConfig):
    """``attentive``: 5 x 5 grid; fewer epochs by default (CPU budget, see docs/probes.md)."""

    lrs: list[float] = Field([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)


class SegLinearSweep(SweepConfig):
    """``seg_linear``: 4 learning rates (paper), one weight decay."""

    lrs: list[float] = Field([3e-3, 1e-2, 3e-2, 1e-1], min_length=1)
    wds: list[float] = Field([1e-2], min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)


class SegBlockSweep(SweepConfig):
    """``seg_block``: 4 learning rates (paper), one weight decay."""

    lrs: list[float] = Field([1e-4, 3e-4, 1e-3, 3e-3], min_length=1)
    wds: list[float] = Field([5e-2], min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)


class AugmentConfig(Strict):
    """Training views of the trained classification probes.

    The backbone runs once per view: every training image gets its clean (evaluation) view
    plus ``views`` augmented ones (random resized crop, horizontal flip, colour jitter), and
    each epoch a head sees one of an image's views drawn at random.
    """

    views: int = Field(1, ge=0)
    crop_scale: Pair = (0.35, 1.0)
    crop_ratio: Pair = (3 / 4, 4 / 3)
    hflip: bool = True
    #: strength of brightness, contrast and saturation jitter (torchvision ``ColorJitter``)
    jitter: float = Field(0.4, ge=0, lt=1)


class KnnConfig(Strict):
    """Cosine k-NN on L2-normalised embeddings, votes weighted by ``exp(sim / temperature)``."""

    ks: list[int] = Field([10, 20, 50, 100], min_length=1)
    temperature: float = Field(0.07, gt=0)

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"{v}: expected positive neighbourhood sizes")
        return sorted(set(v))


class SegPaperConfig(Strict):
    """``protocol: paper`` for the dense probes (paper Sec. 5.2; BEiT's ADE20K recipe where the
    paper's appendix is lost, see docs/probes.md).

    Training views: the image (and its mask, nearest) resized so its short side is
    ``short_side x r``, ``r ~ U(scale)``, a random ``S x S`` crop (padded with the mean colour
    and ignored labels when smaller), a horizontal flip, colour jitter and one cut-out square
    (image only). Evaluation: the short side resized to ``short_side``, ``S x S`` windows every
    ``eval_stride x S`` pixels, overlapping logits averaged, upsampled to the label's full
    resolution and scored there. ``seg.linear`` / ``seg.block`` give the LR x WD grids; both
    train on the same encoder forward.
    """

    epochs: int = Field(128, ge=1)
    batch_size: int = Field(64, ge=1)
    #: short side before the random crop and at evaluation; unset: the encoder's image size
    short_side: int | None = Field(None, ge=8)
    #: range of the random resize ratio (mmseg/BEiT: 0.5 to 2.0)
    scale: Pair = (0.5, 2.0)
    hflip: bool = True
    #: brightness, contrast and saturation jitter (torchvision ``ColorJitter``)
    jitter: float = Field(0.4, ge=0, lt=1)
    #: side of the cut-out square as a fraction of the crop side (0: none)
    cutout: float = Field(0.25, ge=0, lt=1)
    #: window step of the sliding-window evaluation, as a fraction of the window (BEiT: 341/512)
    eval_stride: float = Field(2 / 3, gt=0, le=1)
    #: ``seg_knn``: at most this many training patches in the memory bank (CAPI-style)
    knn_bank: int = Field(500_000, ge=1)
    #: ``seg_knn``: patches drawn from each bank image (seeded; all-ignored patches never drawn)
    knn_patches_per_image: int = Field(64, ge=1)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: Pair) -> Pair:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"{v}: expected 0 < low <= high (resize ratios)")
        return v


class SegConfig(Strict):
    """Dense probes: the data and the three probes' settings.

    With ``root`` unset the task is derived from the classification data (see
    ``docs/probes.md``): ``train_images`` / ``test_images`` canvases, each holding
    ``objects`` pasted images labelled with their class over a textured background (class 0).
    With ``root`` set it is a folder of images and label masks (ADE20K, Cityscapes or a plain
    ``images/`` + ``masks/`` layout).
    """

    root: str | None = None
    layout: Literal["auto", "ade20k", "cityscapes", "plain"] = "auto"
    num_classes: int | None = Field(None, ge=2)
    ignore_index: int = 255
    #: ADE20K convention: label 0 is "other" (ignored) and the others shift down by one
    reduce_zero_label: bool | None = None
    limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    #: training views per image: 1 = clean, 2 = clean + horizontal flip (image and mask)
    views: int = Field(1, ge=1, le=2)
    # derived task
    train_images: int = Field(1000, ge=2)
    test_images: int = Field(250, ge=1)
    objects: int = Field(2, ge=1)
    object_scale: Pair = (0.4, 0.7)
    mask: Literal["auto", "box", "threshold"] = "auto"
    # probes
    ks: list[int] = Field([5, 10, 20, 50], min_length=1)
    linear: SegLinearSweep = SegLinearSweep()
    block: SegBlockSweep = SegBlockSweep()
    paper: SegPaperConfig = SegPaperConfig()

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"{v}: expected positive neighbourhood sizes")
        return sorted(set(v))

    @field_validator("object_scale")
    @classmethod
    def _scale(cls, v: Pair) -> Pair:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"{v}: expected 0 < low <= high <= 1 (fraction of the canvas side)")
        return v


class PaperConfig(Strict):
    """``protocol: paper``: the paper's online classification probes (Sec. 5.1).

    The frozen encoder runs in the loop (bf16 on CUDA, no gradients); every head of the
    ``linear`` and ``attentive`` LR x WD grids trains on the same forward pass of each batch,
    with a fresh augmentation (``augment``'s crop, flip and colour jitter) of every image in
    every epoch. ``linear.lrs/wds/warmup_epochs`` and ``attentive.lrs/wds/warmup_epochs`` give
    the grids; ``epochs`` and ``batch_size`` here replace theirs (one batch feeds every head).
    """

    epochs: int = Field(20, ge=1)
    #: images per optimiser step over all ranks (each rank takes ``batch_size / world``)
    batch_size: int = Field(256, ge=1)
    #: images per forward on the validation and test splits (per rank)
    eval_batch_size: int = Field(256, ge=1)
    #: evaluation view: resize the short side to ``round(S / eval_crop)``, centre crop ``S``
    eval_crop: float = Field(0.875, gt=0, le=1)
    #: DataLoader worker processes per rank (decode + augmentation)
    workers: int = Field(4, ge=0)
    #: save heads + optimiser state every this many steps (and at every epoch end); 0: epoch ends only
    checkpoint_every: int = Field(500, ge=0)
    #: kNN under ``paper``: the bank is a fixed seeded subset of at most this many training images
    knn_bank: int = Field(100_000, ge=1)


class ProbeConfig(Strict):
    """The ``probe:`` section of ``params.yaml``.

    ``data`` / ``root`` unset: the run's own dataset. ``limit`` / ``test_limit`` keep a fixed
    subset of the train / test split. ``val_fraction`` of the (limited) train split is held
    out, with a seeded draw, to choose each probe's hyper-parameters; the test split only
    scores the chosen one.
    """

    probes: list[str] = list(CLASSIFY_PROBES)
    #: ``quick``: features cached once, heads trained on the cache (small data, CPU);
    #: ``paper``: the paper's online protocol (frozen encoder in the loop, fresh augmentation)
    protocol: Literal["quick", "paper"] = "quick"
    data: Literal["embedded", "cifar10", "fashion_mnist", "imagefolder"] | None = None
    root: str | None = None
    limit: int | None = Field(None, ge=2)
    test_limit: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    #: images per backbone forward during feature extraction
    batch_size: int = Field(256, ge=1)
    #: ``auto``: bf16 autocast on CUDA, fp32 on CPU
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    #: keep images and features on the GPU (small datasets)
    on_device: bool = True
    augment: AugmentConfig = AugmentConfig()
    paper: PaperConfig = PaperConfig()
    linear: LinearSweep = LinearSweep()
    attentive: AttentiveSweep = AttentiveSweep()
    knn: KnnConfig = KnnConfig()
    seg: SegConfig = SegConfig()

    @field_validator("probes")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return expand_probe_names(v)
