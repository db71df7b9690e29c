"""The paper's recipes (Appendix B, Tables 6 and 7) as plain nested dicts.

``preset(method, size)`` returns a partial config that ``bootleg.config`` deep-merges
under the user's ``params.yaml``: every value here can be overridden. Sizes ``micro``
and ``tiny`` are not in the paper; they scale the ViT-S recipe down for CPU work.
"""

from __future__ import annotations

from typing import Any

from bootleg.targets import every_fourth_block

METHODS = ("bootleg", "ijepa", "mae", "data2vec")

#: encoder shapes: (embed_dim, depth, num_heads)
ENCODERS: dict[str, tuple[int, int, int]] = {
    "micro": (96, 8, 3),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

#: predictor shapes per method and size: (depth, embed_dim, num_heads) — Table 7.
PREDICTORS: dict[str, dict[str, tuple[int, int, int]]] = {
    "bootleg": {
        "micro": (4, 64, 4),
        "tiny": (6, 96, 6),
        "small": (10, 192, 16),
        "base": (10, 384, 16),
        "large": (10, 512, 16),
    },
    "ijepa": {
        "micro": (4, 48, 3),
        "tiny": (6, 96, 3),
        "small": (6, 192, 6),
        "base": (6, 384, 12),
        "large": (12, 384, 16),
    },
    "mae": {
        "micro": (4, 64, 4),
        "tiny": (8, 128, 4),
        "small": (8, 256, 8),
        "base": (8, 512, 16),
        "large": (8, 512, 16),
    },
}
PREDICTORS["data2vec"] = PREDICTORS["bootleg"]  # section 6.2's "+our ViT predictor" variant of data2vec 2.0


def last_blocks(depth: int, n: int = 10) -> list[int]:
    """data2vec's targets: the last ``n`` blocks (1-indexed)."""
    return list(range(max(1, depth - n + 1), depth + 1))


def _encoder(size: str, cls: bool, regs: int) -> dict[str, Any]:
    dim, depth, heads = ENCODERS[size]
    return {
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "cls_token": cls,
        "reg_tokens": regs,
    }


def _predictor(method: str, size: str, regs: int) -> dict[str, Any]:
    depth, dim, heads = PREDICTORS[method][size]
    return {"kind": "vit", "depth": depth, "embed_dim": dim, "num_heads": heads, "reg_tokens": regs}


def preset(method: str, size: str) -> dict[str, Any]:
    """Partial config for ``method`` at encoder ``size`` (unknown names are left to
    validation, which reports them with the allowed values)."""
    if method not in METHODS or size not in ENCODERS:
        return {}
    depth = ENCODERS[size][1]
    small = size in ("micro", "tiny", "small")
    if method == "bootleg":
        lr_edge = 1e-4 if small else 3e-5  # Table 7: ViT-S uses 1/30 of the max LR
        return {
            "model": {
                **_encoder(size, True, 4),
                "predictor": _predictor(method, size, 4),
            },
            "masking": {"sampler": "bootleg"},
            "targets": {
                "kind": "latent",
                "blocks": every_fourth_block(depth),
                "merge": "concat",
            },
            "loss": {"name": "mse"},
            "optim": {
                "epochs": 600,
                "warmup_epochs": 105,
                "batch_size": 2048,
                "lr_ref_batch": 2048,
                "lr_init": lr_edge,
                "lr_max": 3e-3,
                "lr_final": lr_edge,
                "wd_init": 0.05,
                "wd_final": 0.05,
                "betas": [0.9, 0.95],
                "ema_init": 0.9985,
                "ema_final": 0.9985,
            },
            "data": {
                "crop_scale": [0.35, 1.0],
                "hflip": True,
                "interpolation": "bicubic",
            },
        }
    if method == "ijepa":
        return {
            "model": {
                **_encoder(size, False, 0),
                "init": "ijepa",  # trunc-normal 0.02, per-layer rescale (I-JEPA's _init_weights + fix_init_weight)
                "predictor": _predictor(method, size, 0),
            },
            "masking": {"sampler": "ijepa"},
            # I-JEPA's code: layer_norm(target_encoder(x)), i.e. the final block after the encoder's norm
            "targets": {"kind": "latent", "blocks": [depth], "merge": "concat", "norm": "final"},
            "loss": {"name": "smooth_l1"},
            "optim": {
                "epochs": 600,
                "warmup_epochs": 40,
                "batch_size": 2048,
                "lr_ref_batch": 2048,
                "lr_init": 2e-4,
                "lr_max": 1e-3,
                "lr_final": 1e-6,
                "wd_init": 0.04,
                "wd_final": 0.4,
                "betas": [0.9, 0.999],
                "ema_init": 0.996,
                "ema_final": 1.0,
            },
            "data": {
                "crop_scale": [0.3, 1.0],
                "hflip": False,
                "interpolation": "bilinear",
            },
        }
    if method == "mae":
        return {
            "model": {
                **_encoder(size, True, 0),
                "predictor": _predictor(method, size, 0),
            },
            "masking": {"sampler": "random"},
            "targets": {"kind": "pixels", "norm_pix": True},
            "loss": {"name": "mse"},
            "optim": {
                "epochs": 800 if small else 1600,  # Table 1: ViT-S 800, ViT-B/L 1600
                "warmup_epochs": 40,
                "batch_size": 4096,
                "lr_ref_batch": 4096,
                "lr_init": 0.0,
                "lr_max": 1.2e-3,
                "lr_final": 0.0,
                "wd_init": 0.05,
                "wd_final": 0.05,
                "betas": [0.9, 0.95],
                "ema_init": 0.9999,
                "ema_final": 0.9999,
            },
            "data": {
                "crop_scale": [0.2, 1.0],
                "hflip": True,
                "interpolation": "bicubic",
            },
        }
    # data2vec 2.0 (Baevski et al., 2023) for images, as its released image config sets it:
    # inverse-block masks (80%, blocks of 3), M = 16 masks per teacher pass on batches of 512,
    # targets = the MLP residual-branch outputs of the last 10 blocks, each instance-normalised,
    # averaged, then layer-normalised; a light grouped-conv decoder; AdamW (0.9, 0.95), wd 0.05,
    # lr 1e-3 at batch 512 with a short warmup; EMA 0.9998 -> 0.99999. Epochs: 200, as in Table 1.
    dim = ENCODERS[size][0]
    return {
        "mask_repeats": 16,
        "model": {
            **_encoder(size, True, 0),
            "predictor": {"kind": "conv", "depth": 6, "embed_dim": dim, "kernel": 3, "groups": 16},
        },
        "masking": {"sampler": "inverse_block"},
        "targets": {
            "kind": "latent",
            "blocks": [],
            "mlp_branch": last_blocks(depth),
            "merge": "mean",
            "norm": "instance",
            "post_norm": True,
        },
        "loss": {"name": "mse"},
        "optim": {
            "epochs": 200,
            "warmup_epochs": 20,
            "batch_size": 512,
            "lr_ref_batch": 512,
            "lr_init": 0.0,
            "lr_max": 1e-3,
            "lr_final": 0.0,
            "wd_init": 0.05,
            "wd_final": 0.05,
            "betas": [0.9, 0.95],
            "ema_init": 0.9998,
            "ema_final": 0.99999,
        },
        "data": {"crop_scale": [0.08, 1.0], "hflip": True, "interpolation": "bicubic"},
    }
