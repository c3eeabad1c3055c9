"""Probe a user's DataLoaders with their largest batches instead of whatever comes first.

A batch of a real dataset can be much larger than the first one the loader
yields. Examples are a batch of a text dataset's longest documents, or of the
biggest images of a dataset without a fixed image size. A fit's memory peaks on the largest batch, so
a trial finds it and feeds it for every batch of the fit:

- fastai's ``SortedDL`` (text) records every item's length, so the batch is
  its ``bs`` longest items, out of the whole dataset;
- any other loader is scanned for ``scan_batches`` batches, and the one with
  the most elements (all tensors of inputs and targets) is kept. A scan can
  miss a large batch further on; the description says how many it read.

The chosen batch is kept on the host, before the loader's batch transforms,
and each iteration moves it to the device and transforms it as the loader
would, so the trial allocates what a real batch allocates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastai.text.data import SortedDL
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class LargestBatch:
    """The batch a trial feeds a loader's fit, and how it was found."""

    batch: Any  # host tensors, before the loader's batch transforms
    description: str


def batch_elements(batch: Any) -> int:
    """Count the elements of every tensor in a batch."""
    return sum(leaf.numel() for leaf in tree_leaves(batch) if isinstance(leaf, torch.Tensor))


def _shape(batch: Any) -> str:
    """Return the shapes of a batch's tensors, for example ``16x1000 + 16``."""
    tensors = [leaf for leaf in tree_leaves(batch) if isinstance(leaf, torch.Tensor)]
    return " + ".join("x".join(str(size) for size in tensor.shape) or "scalar" for tensor in tensors) or "?"


def find_largest_batch(loader: Any, scan_batches: int, name: str) -> LargestBatch:
    """Return the largest batch of ``loader``: exact for ``SortedDL``, else the largest of a bounded scan."""
    items = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    if loader.drop_last and items is not None and loader.bs is not None and items < loader.bs:
        raise ValueError(
            f"the {name} DataLoader has {items} items, fewer than one batch of {loader.bs}, and drops the "
            f"last partial batch: lower batch_size, or set dataset_size: {items} on the model entry "
            f"so that a search stays below it"
        )
    if isinstance(loader, SortedDL) and len(loader.res) >= loader.bs:
        lengths = np.asarray(loader.res)
        longest = np.argsort(lengths, kind="stable")[::-1][: loader.bs]
        batch = loader.do_batch([loader.do_item(int(index)) for index in longest])
        shortest, tallest = int(lengths[longest].min()), int(lengths[longest].max())
        span = f"{shortest}" if shortest == tallest else f"{shortest}-{tallest}"
        return LargestBatch(
            batch, f"{name}: the {loader.bs} longest of {len(lengths)} items (batch {_shape(batch)}, length {span})"
        )
    return _scan(loader, scan_batches, name)


def _scan(loader: Any, scan_batches: int, name: str) -> LargestBatch:
    """Read up to ``scan_batches`` batches on the host, before batch transforms, and keep the largest."""
    device, after_batch = loader.device, loader.after_batch
    loader.device, loader.after_batch = None, _unchanged
    largest, largest_size, smallest_size, position, read = None, -1, None, 0, 0
    try:
        for read, batch in enumerate(loader, 1):
            size = batch_elements(batch)
            smallest_size = size if smallest_size is None else min(smallest_size, size)
            if size > largest_size:
                largest, largest_size, position = batch, size, read
            if read >= scan_batches:
                break
    finally:
        loader.device, loader.after_batch = device, after_batch
    if largest is None:
        raise ValueError(f"the {name} DataLoader yielded no batch")
    total = len(loader)
    scanned = f"{read} of {total}" if read < total else f"all {total}"
    return LargestBatch(
        largest,
        f"{name}: batch {position} ({_shape(largest)}, {largest_size:,} elements), the largest of {scanned} "
        f"batches scanned (the smallest had {smallest_size:,})",
    )


def _unchanged(batch: Any) -> Any:
    return batch


def feed_largest_batch(loader: Any, largest: LargestBatch, count: int) -> None:
    """Make ``loader`` an epoch of ``count`` copies of ``largest``, moved and transformed as its own batches are.

    ``count`` may exceed the loader's own length: a dataset of one batch
    still steps the optimizer every epoch of a real fit.
    """
    loader.n = count * loader.bs if loader.bs else count  # fastai's len(loader), which schedules read
    loader.drop_last = False
    loader.get_idxs = lambda: range(loader.n)  # the loader's own order, which may index past its dataset, is unused
    loader.create_batches = lambda samples: (largest.batch for _ in range(count))
    loader.largest_batch = largest  # the simulated backend fakes batches of its shapes


def check_fastai_loaders(dls: Any) -> None:
    """Raise ``TypeError`` unless the training and validation loaders are fastai DataLoaders."""
    for name, loader in (("train", dls.train), ("valid", dls.valid)):
        if not hasattr(loader, "create_batches"):
            raise TypeError(
                f"the {name} DataLoader is a {type(loader).__name__}, but a learner factory must give "
                f"fastai DataLoaders (fastai.data.core.DataLoaders of TfmdDL or DataLoader)"
            )


def use_largest_batches(dls: Any, scan_batches: int, train_batches: int, valid_batches: int) -> str:
    """Feed the training and validation loaders epochs of their largest batches; return what was chosen.

    The loaders must be fastai's (``check_fastai_loaders``). They run in the
    trial's process from then on, because a stored batch needs no loader
    workers, and worker processes would have to pickle every batch.
    """
    descriptions = []
    for name, loader, count in (("train", dls.train, train_batches), ("valid", dls.valid, max(valid_batches, 1))):
        loader.fake_l.num_workers = 0
        largest = find_largest_batch(loader, scan_batches, name)
        feed_largest_batch(loader, largest, count)
        descriptions.append(largest.description)
    return "; ".join(descriptions)
