"""Datasets, batched augmentation and the resumable training stream.

* :mod:`~bootleg.data.sources`: ``SOURCES`` (``data.name`` -> source), :func:`load_images`
  (a split in memory), :func:`open_split` (in memory or streamed :class:`Items`);
* :mod:`~bootleg.data.cache`: the decode cache and downloads; :mod:`~bootleg.data.readers`: formats;
* :mod:`~bootleg.data.shards` / :mod:`~bootleg.data.shard_writer`: WebDataset tar shards;
* :mod:`~bootleg.data.augment`: crops, flips, resize and normalisation on any device;
* :func:`build_stream`: :class:`MemoryStream` or :class:`StreamingStream`, both ``batches(start)``
  over ``(images, masks)``, a pure function of ``(seed, epoch, batch, rank)`` (:mod:`~bootleg.data.order`).
"""

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, batch_augment, eval_transform
from bootleg.data.config import DataConfig
from bootleg.data.fingerprint import dataset_fingerprint
from bootleg.data.memory import MemoryStream
from bootleg.data.sources import SOURCES, ImageSet, Items, load_images, open_split
from bootleg.data.stream import Stream, build_stream
from bootleg.data.streaming import StreamingStream

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "DataConfig",
    "ImageSet",
    "Items",
    "MemoryStream",
    "Stream",
    "StreamingStream",
    "batch_augment",
    "build_stream",
    "dataset_fingerprint",
    "eval_transform",
    "load_images",
    "open_split",
]
