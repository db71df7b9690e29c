"""The sampler registry: every module of this package registers its params class here."""

from __future__ import annotations

from bootleg.registry import Registry

SAMPLERS = Registry("masking", "sampler")
