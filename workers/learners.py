"""Build the fastai Learner for a trial as a user would, on synthetic data.

Images are built here; text and tables in ``workers.text`` and
``workers.tabular``. A learner factory's trial builds its own Learner
(``workers.factory``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.vision.core import PILImage, PILMask
from fastai.vision.data import ImageBlock, MaskBlock
from fastai.vision.learner import unet_learner, vision_learner
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)
from torchvision import models

from planner.grid import TIMM_PREFIX, TrialSpec
from planner.tasks import TABULAR_TASK, TEXT_TASKS
from workers.tabular import build_tabular_dataloaders, create_tabular_learner
from workers.text import build_text_dataloaders, create_text_learner


def _noise_image(index: int, size: int) -> PILImage:
    pixels = np.random.default_rng(index).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return PILImage.create(pixels)


def _noise_mask(index: int, size: int, classes: int) -> PILMask:
    labels = np.random.default_rng(index + 1_000_003).integers(0, classes, (size, size), dtype=np.uint8)
    return PILMask.create(labels)


def build_dataloaders(spec: TrialSpec, *, train_items: int, valid_items: int, device: torch.device):
    """Build the task's DataLoaders of synthetic items, with fastai's default validation batch size."""
    if spec.task in TEXT_TASKS:
        return build_text_dataloaders(spec, train_items=train_items, valid_items=valid_items, device=device)
    if spec.task == TABULAR_TASK:
        return build_tabular_dataloaders(spec, train_items=train_items, valid_items=valid_items, device=device)
    return _image_dataloaders(spec, train_items=train_items, valid_items=valid_items, device=device)


def _image_dataloaders(spec: TrialSpec, *, train_items: int, valid_items: int, device: torch.device):
    """Build DataLoaders of synthetic images at the spec's size."""
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
    """Build the task's fastai learner with random weights (pretrained=False).

    On DataLoaders whose device is meta (the simulated backend's), the model's
    parameters and buffers are meta tensors, which have shapes but no data, so
    weight initialisation and fastai's shape probes compute nothing.
    """
    if dls.device is not None and torch.device(dls.device).type == "meta":
        with parameters_on_meta(), _one_item_batches(dls):
            learn = _create_learner(spec, dls)
    else:
        learn = _create_learner(spec, dls)
    learn.logger = lambda *_: None  # keep the actor's output to one line per trial
    return learn


def _create_learner(spec: TrialSpec, dls) -> Learner:
    if spec.task in TEXT_TASKS:
        return create_text_learner(spec, dls)
    if spec.task == TABULAR_TASK:
        return create_tabular_learner(spec, dls)
    if spec.arch.startswith(TIMM_PREFIX):
        # fastai builds a timm model from its name.
        return vision_learner(dls, spec.arch.removeprefix(TIMM_PREFIX), pretrained=False)
    arch = getattr(models, spec.arch)
    if spec.task == "classification":
        return vision_learner(dls, arch, pretrained=False)
    return unet_learner(dls, arch, pretrained=False)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Move every parameter and buffer that a module registers inside the block to the meta device.

    Unlike ``torch.device("meta")``, this leaves other tensors on the CPU, so
    constructors that read values still work (torchvision's RegNet calls
    ``tolist()``). Initialisers that run after registration, as
    ``reset_parameters`` does, touch only meta tensors. A tensor registered
    twice (tied weights) becomes one meta tensor.
    """
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def to_meta(module: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None or tensor.device.type == "meta":
            return None
        if id(tensor) not in moved:
            meta = tensor.to("meta")
            if isinstance(tensor, torch.nn.Parameter):
                meta = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad)
            moved[id(tensor)] = (tensor, meta)  # holding the original keeps its id from being reused
        return moved[id(tensor)][1]

    handles = [
        register_module_parameter_registration_hook(to_meta),
        register_module_buffer_registration_hook(to_meta),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _one_item_batches(dls) -> Iterator[None]:
    """Make ``dls.one_batch()`` return one item after batch transforms instead of a full batch.

    ``unet_learner`` reads only the image size from ``dls.one_batch()``, and a
    full batch decodes ``bs`` images.
    """
    train = dls.train
    sample = train.after_batch(train.do_batch([train.do_item(0)]))
    train.one_batch = lambda: sample
    try:
        yield
    finally:
        del train.one_batch
