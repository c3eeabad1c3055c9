"""Build every torchvision architecture with fastai's learners and print the ones that work.

Usage: ``python scripts/probe_architectures.py``. Each architecture in
torchvision's ``list_models`` is built with ``vision_learner`` and
``unet_learner`` (pretrained=False) on two synthetic images and run forward
once. The printed tuples are what ``planner/architectures.py`` lists.
Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from fastai.vision.all import (
    CategoryBlock,
    DataBlock,
    ImageBlock,
    IndexSplitter,
    MaskBlock,
    PILImage,
    PILMask,
    unet_learner,
    vision_learner,
)
from torchvision import models

# Transformers and inception expect their own input size.
_FIXED_SIZE = ("vit", "swin", "maxvit", "inception")


def _dataloaders(size: int, segmentation: bool):
    def get_x(_: int) -> PILImage:
        return PILImage.create(np.zeros((size, size, 3), dtype=np.uint8))

    if segmentation:
        blocks = (ImageBlock, MaskBlock(codes=["a", "b", "c"]))

        def get_y(_: int) -> PILMask:
            return PILMask.create(np.zeros((size, size), dtype=np.uint8))

    else:
        blocks = (ImageBlock, CategoryBlock)

        def get_y(index: int) -> str:
            return str(index % 2)

    block = DataBlock(blocks=blocks, get_items=lambda _: list(range(4)), get_x=get_x, get_y=get_y, splitter=IndexSplitter([3]))
    return block.dataloaders(None, bs=2, device="cpu", num_workers=0)


def probe(segmentation: bool) -> list[str]:
    """Return the architectures that build and run forward for one task."""
    working = []
    for name in models.list_models(module=models):
        size = 224 if name.startswith(_FIXED_SIZE) else 64
        make_learner = unet_learner if segmentation else vision_learner
        try:
            dls = _dataloaders(size, segmentation)
            learn = make_learner(dls, getattr(models, name), pretrained=False)
            images, _ = dls.one_batch()
            learn.model.eval()
            with torch.no_grad():
                learn.model(images)
        except Exception as error:  # any failure excludes the architecture
            print(f"# {'segmentation' if segmentation else 'classification'}: {name} fails: {type(error).__name__}")
            continue
        working.append(name)
    return working


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    print("CLASSIFICATION =", tuple(probe(segmentation=False)))
    print("SEGMENTATION =", tuple(probe(segmentation=True)))
