"""Count live tensor storage bytes at the dispatcher, as a card's allocator would see them."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from workers.allocator import AllocatorOutOfMemory, CachingAllocatorModel

# The CUDA caching allocator rounds every block up to a multiple of 512 bytes
# (kMinBlockSize in c10/cuda/CUDACachingAllocator.cpp), and so does
# torch.cuda.memory_allocated.
_MIN_BLOCK_BYTES = 512

# Event kinds in ``StorageTracker.events``: (kind, storage id, bytes, position).
ALLOC, FREE = 0, 1


def round_block(nbytes: int) -> int:
    """Round a request up as the caching allocator does. Zero bytes allocate nothing."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // _MIN_BLOCK_BYTES) * _MIN_BLOCK_BYTES


class StorageTracker(TorchDispatchMode):
    """Track the storages that operators create and the bytes they hold while alive.

    Every operator output's untyped storage is counted once, rounded as the
    CUDA allocator rounds it, and uncounted when Python frees it. Optional:

    - ``limit_bytes`` raises ``torch.OutOfMemoryError`` when an output would
      push the live total past the limit.
    - ``allocator`` replays each storage as a malloc and free in a model of
      the CUDA caching allocator, which raises when its capacity runs out and
      reports peak reserved bytes.
    - ``events`` records (kind, storage id, bytes, position) for replaying
      later, where ``position`` is what the ``position`` callable returned.
    - ``only_fake`` counts only fake tensors, the device side of a simulated
      trial, and ignores the real host tensors around them.

    Known limitations:

    - Only operator outputs are seen. Workspaces a kernel allocates inside
      itself (cuDNN, cuBLAS) are not counted: the peak is an underestimate.
    - Storages created outside the mode (a model built before tracking) are
      counted only when passed to ``adopt``.
    """

    def __init__(
        self,
        *,
        limit_bytes: int | None = None,
        card_name: str = "card",
        allocator: CachingAllocatorModel | None = None,
        events: list[tuple[int, int, int, int]] | None = None,
        position: Callable[[], int] = lambda: 0,
        only_fake: bool = False,
    ) -> None:
        super().__init__()
        self.limit_bytes = limit_bytes
        self.card_name = card_name
        self.allocator = allocator
        self.events = events
        self.position = position
        self.only_fake = only_fake
        self.allocated_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_position: int | None = None  # position() when the peak (reserved, with an allocator) was reached
        self._peak_seen = 0
        self._cells: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._next_id = 0
        self._paused = 0
        self._closed = False
        # Frees that the garbage collector ran while a malloc was in progress.
        self._in_malloc = False
        self._deferred: list[list[int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            for item in tree_flatten(out)[0]:
                if isinstance(item, torch.Tensor):
                    self._count(item)
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
                self._count(item)

    def close(self) -> None:
        """Stop reacting to frees of storages that outlive the trial."""
        self._closed = True
        self._cells = WeakIdKeyDictionary()

    def _count(self, tensor: torch.Tensor) -> None:
        if self.only_fake and not isinstance(tensor, FakeTensor):
            return
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        # One mutable cell per storage, [id, bytes, allocator handle], shared
        # with its finalizer, so a storage that resize_ changed is released
        # at its final size.
        cell = self._cells.get(storage)
        if cell is not None and cell[1] == nbytes:
            return
        previous = round_block(cell[1]) if cell is not None else 0
        growth = round_block(nbytes) - previous
        if self.limit_bytes is not None and growth > 0 and self.allocated_bytes + growth > self.limit_bytes:
            raise torch.OutOfMemoryError(
                f"Emulated card {self.card_name!r} out of memory: tried to allocate "
                f"{growth} bytes with {self.allocated_bytes} of {self.limit_bytes} bytes in use"
            )
        if cell is not None:
            self._free_cell(cell)  # resize_: release the old size, allocate the new one
            cell[1] = nbytes
        else:
            cell = [self._next_id, nbytes, 0]
            self._next_id += 1
        self._malloc_cell(cell)
        if storage not in self._cells:
            self._cells[storage] = cell
            weakref.finalize(storage, _release, weakref.ref(self), cell)

    def _malloc_cell(self, cell: list[int]) -> None:
        if self.allocator is not None:
            self._in_malloc = True
            try:
                cell[2] = self.allocator.malloc(cell[1])
            except AllocatorOutOfMemory as error:
                raise torch.OutOfMemoryError(f"Emulated card {self.card_name!r} out of memory: {error}") from None
            finally:
                self._in_malloc = False
                self._drain_deferred()
        if self.events is not None:
            self.events.append((ALLOC, cell[0], cell[1], self.position()))
        self.allocated_bytes += round_block(cell[1])
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes)
        peak = self.allocator.peak_reserved_bytes if self.allocator is not None else self.peak_allocated_bytes
        if peak > self._peak_seen:
            self._peak_seen = peak
            self.peak_position = self.position()

    def _free_cell(self, cell: list[int]) -> None:
        if self._in_malloc:
            self._deferred.append(cell)
            return
        if self.allocator is not None:
            self.allocator.free(cell[2])
        if self.events is not None:
            self.events.append((FREE, cell[0], cell[1], self.position()))
        self.allocated_bytes -= round_block(cell[1])

    def _drain_deferred(self) -> None:
        while self._deferred:
            self._free_cell(self._deferred.pop())


def _release(tracker_ref: weakref.ref, cell: list[int]) -> None:
    tracker = tracker_ref()
    if tracker is not None and not tracker._closed:
        tracker._free_cell(cell)
