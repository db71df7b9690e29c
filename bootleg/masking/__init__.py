"""Mask samplers: which patches the encoder sees and which regions the predictor predicts.

Each sampler is one registered pydantic params class (``SAMPLERS``, keyed by its ``sampler``
field) that owns its fields, their validation, a ``check_grid(grid)`` against the patch grid
and ``build(grid) -> MaskSampler``. The config's ``masking`` section is ``MaskingConfig``, the
discriminated union of every registered class. A runtime sampler is called as
``sampler(batch_size, generator) -> Masks`` on the CPU; :class:`StepMasks` turns it into the
``(epoch, batch) -> Masks`` function of one rank's micro-batches (mask groups, padding).

Adding a sampler is one new module in this package (its params class registered with
``@SAMPLERS.register`` and its sampler class) plus its tests: every module here is imported
below, so the config, the CLI choices and the contract tests pick it up.

All sampling is vectorised over the batch. The tensors are tiny, so run samplers on one
intra-op thread (``torch.set_num_threads(1)``, as in data-loader workers).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bootleg.errors import BootlegError
from bootleg.masking.base import Masks, MaskSampler, SamplerParams, mask_seed
from bootleg.masking.registry import SAMPLERS
from bootleg.masking.step import StepMasks
from bootleg.schema import describe_error

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")

MaskingConfig = SAMPLERS.union()
"""The ``masking`` config section: one of the registered params classes, chosen by ``sampler``."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(MaskingConfig)


def parse_masking(data: dict[str, Any]) -> SamplerParams:
    """Validate a ``masking`` mapping (``{"sampler": name, field: value, ...}``); bad input
    raises a one-line :class:`BootlegError` naming ``masking.<field>``."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            got = data.get("sampler") if isinstance(data, dict) else data
            raise BootlegError(f"masking.sampler: {got!r}; expected one of {', '.join(SAMPLERS.names())}") from None
        loc = [str(x) for x in err["loc"]]
        if loc and loc[0] == str(data.get("sampler")):
            loc = loc[1:]  # pydantic puts the union's tag first
        raise BootlegError(describe_error({**err, "loc": ("masking", *loc)})) from None


def build_sampler(params: SamplerParams | dict[str, Any], grid: tuple[int, int]) -> MaskSampler:
    """Check ``params`` against the patch ``grid = (H, W)`` and build its sampler (which
    carries ``group_size`` and ``bucket`` for :class:`StepMasks`). Raises a one-line
    :class:`BootlegError` naming the field for impossible parameters."""
    if isinstance(params, dict):
        params = parse_masking(params)
    grid = params.check_grid(grid)
    sampler = params.build(grid)
    sampler.group_size = getattr(params, "group_size", None)
    sampler.bucket = getattr(params, "bucket", None)
    return sampler


__all__ = [
    "SAMPLERS",
    "MaskSampler",
    "Masks",
    "MaskingConfig",
    "SamplerParams",
    "StepMasks",
    "build_sampler",
    "mask_seed",
    "parse_masking",
]
