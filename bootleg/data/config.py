"""The ``data`` section of the config. ``data.name`` accepts exactly the registered sources
(:data:`bootleg.data.sources.SOURCES`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bootleg.data.sources import SOURCES
from bootleg.schema import Strict

__all__ = ["DataConfig"]

Pair = tuple[float, float]


class DataConfig(Strict):
    name: str = "embedded"
    root: str | None = None
    download: bool = False
    limit: int | None = Field(None, ge=1)
    crop_scale: Pair = (0.35, 1.0)
    crop_ratio: Pair = (0.75, 4 / 3)
    hflip: bool = True
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    on_device: bool = True
    num_workers: int = Field(0, ge=0)
    #: streamed data: ``cpu`` decodes in the workers, ``cuda`` on the training GPU, ``auto`` = cuda on a GPU run
    decode: Literal["auto", "cpu", "cuda"] = "auto"
    #: streamed data: stop when more than this fraction of the images read are unreadable
    max_bad_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"data.name: {v!r} is not allowed; expected one of {', '.join(SOURCES)}")
        return v
