"""Build the fastai Learner for a trial as a user would, on synthetic images."""

from __future__ import annotations

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.vision.core import PILImage, PILMask
from fastai.vision.data import ImageBlock, MaskBlock
from fastai.vision.learner import unet_learner, vision_learner
from torchvision import models

from planner.grid import TrialSpec


def _noise_image(index: int, size: int) -> PILImage:
    pixels = np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return PILImage.create(pixels)


def _noise_mask(index: int, size: int, classes: int) -> PILMask:
    labels = np.random.default_rng(index + 1_000_003).integers(0, classes, (size, size), dtype=np.uint8)
    return PILMask.create(labels)


def build_dataloaders(spec: TrialSpec, *, train_items: int, valid_items: int, device: torch.device):
    """Build DataLoaders of synthetic images at the spec's size, with fastai's default validation batch size."""
    items = list(range(train_items + valid_items))
    size, classes = spec.image_size, spec.classes
    labels = [str(label) for label in range(classes)]

    def get_x(index: int) -> PILImage:
        return _noise_image(index, size)

    if spec.task == "classification":
        blocks = (ImageBlock, CategoryBlock(vocab=labels))

        def get_y(index: int) -> str:
            return labels[index % classes]

    else:
        blocks = (ImageBlock, MaskBlock(codes=labels))

        def get_y(index: int) -> PILMask:
            return _noise_mask(index, size, classes)

    block = DataBlock(
        blocks=blocks,
        get_items=lambda _: items,
        get_x=get_x,
        get_y=get_y,
        splitter=IndexSplitter(list(range(train_items, train_items + valid_items))),
    )
    return block.dataloaders(None, bs=spec.batch_size, device=device, num_workers=0)


def build_learner(spec: TrialSpec, dls) -> Learner:
    """Build ``vision_learner`` or ``unet_learner`` with random weights (pretrained=False)."""
    arch = getattr(models, spec.arch)
    if spec.task == "classification":
        learn = vision_learner(dls, arch, pretrained=False)
    else:
        learn = unet_learner(dls, arch, pretrained=False)
    learn.logger = lambda *_: None  # keep the actor's output to one line per trial
    return learn
