"""Datasets, batched augmentation and the resumable training stream.

* :func:`load_images` / :class:`ImageSet`: labelled images in memory (``embedded``, ``cifar10``,
  ``fashion_mnist``, small ``imagefolder``); :func:`load_imagefolder` streams large folders.
* :func:`batch_augment` / :func:`eval_transform`: crops, flips, resize and normalisation on any device.
* :func:`build_stream` / :class:`TrainStream`: ``(images, masks)`` per micro-step, a pure
  function of ``(seed, epoch, batch, rank)``.
"""

from bootleg.data.augment import IMAGENET_MEAN, IMAGENET_STD, batch_augment, eval_transform
from bootleg.data.datasets import ImageSet, dataset_fingerprint, load_imagefolder, load_images
from bootleg.data.stream import TrainStream, build_stream

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSet",
    "TrainStream",
    "batch_augment",
    "build_stream",
    "dataset_fingerprint",
    "eval_transform",
    "load_imagefolder",
    "load_images",
]
