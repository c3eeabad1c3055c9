"""Count live tensor storage bytes at the dispatcher, as a card's allocator would see them."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# The CUDA caching allocator rounds every block up to a multiple of 512 bytes
# (kMinBlockSize in c10/cuda/CUDACachingAllocator.cpp), and so does
# torch.cuda.memory_allocated.
_MIN_BLOCK_BYTES = 512


def round_block(nbytes: int) -> int:
    """Round a request up as the caching allocator does. Zero bytes allocate nothing."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // _MIN_BLOCK_BYTES) * _MIN_BLOCK_BYTES


class StorageTracker(TorchDispatchMode):
    """Track the storages that operators create and the bytes they hold while alive.

    Every operator output's untyped storage is counted once, rounded as the
    CUDA allocator rounds it, and uncounted when Python frees it. With
    ``limit_bytes`` set, an operator whose output would push the live total
    past the limit raises ``torch.OutOfMemoryError`` instead of returning.

    Known limitations:

    - Only operator outputs are seen. Workspaces a kernel allocates inside
      itself (cuDNN, cuBLAS) are not counted: the peak is an underestimate.
    - Storages created outside the mode (a model built before tracking) are
      counted only when passed to ``adopt``.
    """

    def __init__(self, *, limit_bytes: int | None = None, card_name: str = "card") -> None:
        super().__init__()
        self.limit_bytes = limit_bytes
        self.card_name = card_name
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._paused = 0
        self._closed = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            for item in tree_flatten(out)[0]:
                if isinstance(item, torch.Tensor):
                    self._count(item.untyped_storage())
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop counting new storages inside the block, for host-side work such as data loading."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def adopt(self, tensors: Any) -> None:
        """Count storages created before tracking began, as moving them to the card would."""
        for item in tree_flatten(tensors)[0]:
            if isinstance(item, torch.Tensor):
                self._count(item.untyped_storage())

    def close(self) -> None:
        """Stop reacting to frees of storages that outlive the trial."""
        self._closed = True
        self._sizes = WeakIdKeyDictionary()

    def _count(self, storage: torch.UntypedStorage) -> None:
        size = round_block(storage.nbytes())
        # One mutable cell per storage, shared with its finalizer, so that a
        # storage that resize_ grew is released at its final size.
        cell = self._sizes.get(storage)
        previous = cell[0] if cell is not None else 0
        growth = size - previous
        if growth == 0 and cell is not None:
            return
        if self.limit_bytes is not None and growth > 0 and self.allocated_bytes + growth > self.limit_bytes:
            raise torch.OutOfMemoryError(
                f"Emulated card {self.card_name!r} out of memory: tried to allocate "
                f"{growth} bytes with {self.allocated_bytes} of {self.limit_bytes} bytes in use"
            )
        if cell is None:
            cell = [size]
            self._sizes[storage] = cell
            weakref.finalize(storage, self._release, weakref.ref(self), cell)
        else:
            cell[0] = size
        self.allocated_bytes += growth
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)

    @staticmethod
    def _release(tracker_ref: weakref.ref, cell: list[int]) -> None:
        tracker = tracker_ref()
        if tracker is not None and not tracker._closed:
            tracker.allocated_bytes -= cell[0]
