"""The one rule both streams share: ``(seed, epoch, batch, rank)`` -> the step's image indices
and its augmentation generator.

With ``B`` the per-rank micro-batch, ``W`` the world size and ``N`` the number of images:

* ``steps_per_epoch = N // (B * W)`` (the last partial batch of an epoch is dropped);
* step ``t`` is batch ``b = t % steps_per_epoch`` of epoch ``e = t // steps_per_epoch``;
* the epoch's order is ``torch.randperm(N)`` seeded by ``mix_seed(seed, e, "perm")`` (the same on
  every rank); rank ``r`` takes ``order[b*B*W + r*B : b*B*W + (r+1)*B]``: ranks see disjoint images;
* crops and flips come from a generator seeded by ``mask_seed(seed, e, b, r, 0) ^ AUG_SEED_XOR``;
  the masks come from the caller's ``masks(e, b)`` (:class:`bootleg.masking.StepMasks` seeds
  its generator with ``mask_seed(seed, e, b, r, 0)``).

The ``worker`` argument of ``mask_seed`` is always 0: a DataLoader hands steps to workers
round-robin from wherever the iterator starts, so seeding by worker id would break resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bootleg.errors import BootlegError
from bootleg.io import mix_seed
from bootleg.masking import Masks, mask_seed

__all__ = ["AUG_SEED_XOR", "Draw", "StepOrder", "epoch_order"]

#: XOR-ed into the mask seed to seed the crop/flip generator (keeps the two streams distinct).
AUG_SEED_XOR = 0x2545_F491_4F6C_DD1D
_PERM_TAG = 0x7065_726D  # "perm"


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation ``(n,)`` int64 of epoch ``epoch``."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, _PERM_TAG))
    return torch.randperm(n, generator=g)


@dataclass
class Draw:
    """One step of one rank: where it is, which images, and the generator of its crops/flips."""

    epoch: int
    batch: int
    indices: torch.Tensor  # (B,) int64
    aug_generator: torch.Generator


class StepOrder:
    """Step -> :class:`Draw` for one rank (caches the current epoch's permutation)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise BootlegError(
                f"stream: batch_size={batch_size}, rank={rank}, world_size={world_size}; "
                "expected B >= 1, 0 <= rank < world"
            )
        if seed < 0:
            raise BootlegError(f"run.seed: {seed}; expected a non-negative integer")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.steps_per_epoch = n // (batch_size * world_size)
        if self.steps_per_epoch < 1:
            raise BootlegError(
                f"optim.batch_size: one step needs {batch_size} x {world_size} ranks = {batch_size * world_size} "
                f"images but the data has {n}; expected a smaller batch (or more data / a larger data.limit)"
            )
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def locate(self, step: int) -> tuple[int, int]:
        """``(epoch, batch)`` of ``step``."""
        if step < 0:
            raise BootlegError(f"stream: step {step}; expected >= 0")
        return divmod(step, self.steps_per_epoch)

    def indices(self, epoch: int, batch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._perm, self._epoch = epoch_order(self.n, self.seed, epoch), epoch
        start = batch * self.batch_size * self.world_size + self.rank * self.batch_size
        return self._perm[start : start + self.batch_size]

    def aug_seed(self, epoch: int, batch: int) -> int:
        return mask_seed(self.seed, epoch, batch, self.rank, 0) ^ AUG_SEED_XOR

    def draw(self, step: int) -> Draw:
        e, b = self.locate(step)
        g = torch.Generator().manual_seed(self.aug_seed(e, b))
        return Draw(e, b, self.indices(e, b), g)


class StepStream:
    """What both training streams share: their :class:`StepOrder` (``self.order``) and random
    access to one step's batch through their own ``batches(start)``."""

    order: StepOrder

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, Masks]]:
        raise NotImplementedError

    def indices(self, step: int) -> torch.Tensor:
        """Image indices ``(B,)`` of ``step`` on this rank (before any bad-file replacement)."""
        return self.order.draw(step).indices

    def batch(self, step: int) -> tuple[torch.Tensor, Masks]:
        """The batch of ``step`` alone (no prefetching)."""
        it = self.batches(step)
        try:
            return next(it)
        finally:
            it.close()
