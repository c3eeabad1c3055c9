"""A pure-Python model of PyTorch's CUDA caching allocator.

``CachingAllocatorModel`` replays a sequence of ``malloc`` and ``free`` calls and
keeps the allocated and reserved byte counters behind ``torch.cuda.memory_allocated``
and ``torch.cuda.memory_reserved``, within the limits its docstring lists.
NOTE: the model has not yet been compared with a replay on a real GPU.

Source: ``c10/cuda/CUDACachingAllocator.cpp`` in pytorch/pytorch at commit
001074d25084fdb87a799823e395a50f5ec044d3, read for this model. The PyTorch release
that contains that commit was not checked. Each rule below names the C++ function
it comes from. The model follows the default configuration: no expandable segments,
``max_split_size`` unlimited, no ``roundup_power2_divisions`` and no
``garbage_collection_threshold``.
"""

from __future__ import annotations

import bisect
import operator
from dataclasses import dataclass

import torch

# Constants from CUDACachingAllocator.cpp (namespace-level constexpr values).
MIN_BLOCK_BYTES = 512  # kMinBlockSize: every block is a multiple of 512 bytes
SMALL_SIZE_BYTES = 1_048_576  # kSmallSize: the largest request served by the small pool
SMALL_BUFFER_BYTES = 2_097_152  # kSmallBuffer: segment size for small requests
LARGE_BUFFER_BYTES = 20_971_520  # kLargeBuffer: segment size for requests in (1 MiB, 10 MiB)
MIN_LARGE_ALLOC_BYTES = 10_485_760  # kMinLargeAlloc: from here a request gets its own segment
ROUND_LARGE_BYTES = 2_097_152  # kRoundLarge: large segments are multiples of 2 MiB

# NativeCachingAllocator::allocate rejects requests of 1 EiB or more with an
# OutOfMemoryError before reaching the device allocator.
MAX_REQUEST_BYTES = 1_152_921_504_606_846_976

# Start of the model's address space. Addresses only order blocks of equal size
# (BlockComparatorSize breaks ties by address) and place blocks inside a segment.
_FIRST_SEGMENT_ADDRESS = 0


def round_size(nbytes: int) -> int:
    """Round a request up to the block size the allocator hands out.

    Mirrors ``DeviceCachingAllocator::round_size``: requests under 512 bytes,
    including 0, become 512 and larger ones round up to a multiple of 512.
    ``CachingAllocatorModel.malloc`` never rounds 0 because the real allocator
    returns a null pointer for it without calling ``round_size``.
    NOTE: with ``roundup_power2_divisions`` set, the C++ rounds to power-of-2 divisions instead.
    """
    if nbytes < MIN_BLOCK_BYTES:
        return MIN_BLOCK_BYTES
    return MIN_BLOCK_BYTES * ((nbytes + MIN_BLOCK_BYTES - 1) // MIN_BLOCK_BYTES)


def allocation_size(nbytes: int) -> int:
    """Return the size of the segment a new device allocation gets for a request.

    Mirrors ``DeviceCachingAllocator::get_allocation_size(round_size(nbytes))``.
    Requests up to 1 MiB get a 2 MiB segment, requests under 10 MiB a 20 MiB
    segment, and larger ones the request rounded up to a multiple of 2 MiB.
    """
    size = round_size(nbytes)
    if size <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if size < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return ROUND_LARGE_BYTES * ((size + ROUND_LARGE_BYTES - 1) // ROUND_LARGE_BYTES)


def _format_bytes(nbytes: int) -> str:
    return f"{nbytes} bytes ({nbytes / 1_048_576:.2f} MiB)"


class AllocatorOutOfMemory(torch.OutOfMemoryError):
    """Raised by ``CachingAllocatorModel.malloc`` when no block or new segment can serve a request.

    The constructor takes only the figures, so the exception pickles (Ray sends
    exceptions between processes), and ``__str__`` builds the message from them.
    """

    def __init__(
        self,
        request_bytes: int,
        segment_bytes: int,
        stream: int,
        allocated_bytes: int,
        reserved_bytes: int,
        capacity_bytes: int | None,
    ) -> None:
        super().__init__(
            request_bytes, segment_bytes, stream, allocated_bytes, reserved_bytes, capacity_bytes
        )
        self.request_bytes = request_bytes
        self.segment_bytes = segment_bytes
        self.stream = stream
        self.allocated_bytes = allocated_bytes
        self.reserved_bytes = reserved_bytes
        self.capacity_bytes = capacity_bytes

    def __str__(self) -> str:
        capacity = "unlimited" if self.capacity_bytes is None else _format_bytes(self.capacity_bytes)
        return (
            f"Caching allocator model out of memory: tried to allocate "
            f"{_format_bytes(self.request_bytes)} on stream {self.stream}, which needs a new "
            f"segment of {_format_bytes(self.segment_bytes)}. "
            f"Reserved {_format_bytes(self.reserved_bytes)} of capacity {capacity}, "
            f"of which {_format_bytes(self.allocated_bytes)} is allocated, "
            f"after releasing every fully free cached segment."
        )


@dataclass(frozen=True)
class BlockInfo:
    """One block of a segment, as ``CachingAllocatorModel.segments`` reports it."""

    size_bytes: int
    allocated: bool


@dataclass(frozen=True)
class SegmentInfo:
    """One segment (one modelled cudaMalloc) and its blocks in address order."""

    address: int
    size_bytes: int
    pool: str  # "small" or "large"
    stream: int
    blocks: tuple[BlockInfo, ...]


class _Block:
    """A contiguous range of a segment, free or allocated, linked to its neighbours."""

    __slots__ = ("address", "size", "stream", "is_small", "allocated", "prev", "next")

    def __init__(self, address: int, size: int, stream: int, is_small: bool) -> None:
        self.address = address
        self.size = size
        self.stream = stream
        self.is_small = is_small
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None


class _Segment:
    __slots__ = ("address", "size", "stream", "is_small", "head")

    def __init__(self, head: _Block) -> None:
        self.address = head.address
        self.size = head.size
        self.stream = head.stream
        self.is_small = head.is_small
        # The block at the segment's start. It stays the head for the segment's
        # life because merges keep the lower block and splits keep the lower part.
        self.head = head


class CachingAllocatorModel:
    """Replay allocations and frees as ``DeviceCachingAllocator`` serves them on one device.

    ``malloc`` returns an integer handle and ``free`` takes it back. The model keeps
    these counters, in bytes, as plain attributes:

    - ``allocated_bytes``: the sum of allocated block sizes, as
      ``torch.cuda.memory_allocated`` reports it. A block can be larger than its
      rounded request when the remainder was too small to split off.
    - ``reserved_bytes``: the sum of segment sizes, as ``torch.cuda.memory_reserved``
      reports it.
    - ``peak_allocated_bytes`` and ``peak_reserved_bytes``: their maxima since
      construction or the last ``reset_peak``.
    - ``num_alloc_retries`` and ``num_ooms``: how often a segment allocation was
      retried after releasing cached segments, and how often ``malloc`` raised.

    Free blocks live in one sorted list per pool, keyed by (stream, size, address)
    as ``BlockComparatorSize`` orders ``BlockPool::blocks``, so a best-fit lookup
    is a bisection.

    Known limitations:

    - No expandable segments (``expandable_segments:True``). Those map memory in
      2 MiB or 20 MiB pages and usually fragment less, so under that setting the
      model tends to overestimate reserved bytes.
    - No ``max_split_size``, ``roundup_power2_divisions`` or
      ``garbage_collection_threshold``. Each changes rounding, splitting or
      release, in either direction.
    - No cross-stream uses (``record_stream``) or CUDA events: a freed block is
      reusable at once, where the real allocator waits for the other streams.
      This underestimates reserved bytes.
    - No CUDA graph private pools. Graph captures keep their memory away from
      the default pools, so the model underestimates reserved bytes for them.
    - No IPC sharing and no free-memory callbacks (``FreeCudaMemoryCallbacksRegistry``).
    - Only the replayed requests are seen. Workspaces that kernels request
      (cuBLAS, cuDNN) count only if the caller replays them, and the CUDA context
      and memory allocated outside PyTorch never count, so reserved bytes are an
      underestimate of device use unless the caller adds them.
    - ``capacity_bytes`` is a plain byte budget for segments. A real cudaMalloc
      fails on the device's free memory, which the driver's page granularity and
      other processes also take from, so the model can fail later than a device.
    - Addresses are synthetic and only grow, whereas cudaMalloc can return a
      released address again. Among free blocks of equal size both pick the lowest
      address, but the model's lowest may not be the device's, so fragmentation
      can differ in either direction.
    """

    def __init__(self, *, capacity_bytes: int | None = None) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(
                f"capacity_bytes must be None (unlimited) or a non-negative number of bytes, "
                f"got {capacity_bytes}"
            )
        self.capacity_bytes = capacity_bytes

        self.allocated_bytes = 0
        self.reserved_bytes = 0
        self.peak_allocated_bytes = 0
        self.peak_reserved_bytes = 0
        self.num_alloc_retries = 0
        self.num_ooms = 0

        # Free blocks as (stream, size, address, block), sorted. Addresses are
        # unique, so tuple comparison never reaches the block.
        self._free_small: list[tuple[int, int, int, _Block]] = []
        self._free_large: list[tuple[int, int, int, _Block]] = []
        self._segments: dict[int, _Segment] = {}
        # None marks a zero-byte request, which has no block.
        self._blocks_by_handle: dict[int, _Block | None] = {}
        self._next_handle = 1
        self._next_address = _FIRST_SEGMENT_ADDRESS

    def malloc(self, nbytes: int, stream: int = 0) -> int:
        """Allocate ``nbytes`` on ``stream`` and return a handle for ``free``.

        Follows ``DeviceCachingAllocator::malloc``: best fit from the pool's
        free blocks, else a new segment, else release every fully free cached
        segment and try a new segment once more, else raise
        ``AllocatorOutOfMemory``. A zero-byte request returns a handle with no
        block behind it, as ``NativeCachingAllocator::allocate`` returns a null pointer.
        """
        nbytes = operator.index(nbytes)  # accepts NumPy integers, raises TypeError for floats
        if nbytes < 0:
            raise ValueError(f"nbytes must be a non-negative number of bytes, got {nbytes}")
        if nbytes == 0:
            return self._new_handle(None)
        if nbytes >= MAX_REQUEST_BYTES:
            self.num_ooms += 1
            raise AllocatorOutOfMemory(
                nbytes, nbytes, stream, self.allocated_bytes, self.reserved_bytes, self.capacity_bytes
            )

        size = round_size(nbytes)
        # get_pool: rounded requests up to kSmallSize go to the small pool.
        is_small = size <= SMALL_SIZE_BYTES
        block = self._take_free_block(self._free_small if is_small else self._free_large, stream, size)
        # trigger_free_memory_callbacks would run here and search again. The
        # model has no callbacks, so a second search would find nothing new.
        if block is None:
            segment_bytes = allocation_size(size)
            block = self._alloc_segment(segment_bytes, stream, is_small)
            # release_available_cached_blocks returns false at once when
            # max_split_size is unlimited, so the next step is release_cached_blocks.
            # NOTE: with max_split_size set, the C++ first frees just enough oversize blocks.
            if block is None:
                self._release_cached_blocks()
                self.num_alloc_retries += 1
                block = self._alloc_segment(segment_bytes, stream, is_small)
            if block is None:
                self.num_ooms += 1
                raise AllocatorOutOfMemory(
                    nbytes,
                    segment_bytes,
                    stream,
                    self.allocated_bytes,
                    self.reserved_bytes,
                    self.capacity_bytes,
                )

        if self._should_split(block, size):
            self._split(block, size)
        block.allocated = True
        self.allocated_bytes += block.size
        if self.allocated_bytes > self.peak_allocated_bytes:
            self.peak_allocated_bytes = self.allocated_bytes
        return self._new_handle(block)

    def free(self, handle: int) -> None:
        """Return the block behind ``handle`` to its pool, merging it with free neighbours.

        Follows ``DeviceCachingAllocator::free`` and ``free_block``. Reserved bytes
        do not change: the segment stays cached until ``empty_cache`` or an
        allocation under capacity pressure releases it.
        """
        try:
            block = self._blocks_by_handle.pop(handle)
        except KeyError:
            raise ValueError(
                f"invalid handle {handle!r}: malloc never returned it or it was already freed"
            ) from None
        if block is None:
            return
        block.allocated = False
        self.allocated_bytes -= block.size
        self._free_block(block)

    def empty_cache(self) -> None:
        """Release every segment that has no allocated block, as ``emptyCache`` does."""
        self._release_cached_blocks()

    def reset_peak(self) -> None:
        """Set both peaks to the current values, as ``resetPeakStats`` does."""
        self.peak_allocated_bytes = self.allocated_bytes
        self.peak_reserved_bytes = self.reserved_bytes

    def segments(self) -> list[SegmentInfo]:
        """Return a snapshot of every segment and its blocks, in address order."""
        snapshot = []
        for segment in sorted(self._segments.values(), key=lambda s: s.address):
            blocks = []
            block = segment.head
            while block is not None:
                blocks.append(BlockInfo(size_bytes=block.size, allocated=block.allocated))
                block = block.next
            snapshot.append(
                SegmentInfo(
                    address=segment.address,
                    size_bytes=segment.size,
                    pool="small" if segment.is_small else "large",
                    stream=segment.stream,
                    blocks=tuple(blocks),
                )
            )
        return snapshot

    def _new_handle(self, block: _Block | None) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._blocks_by_handle[handle] = block
        return handle

    def _take_free_block(
        self, free_list: list[tuple[int, int, int, _Block]], stream: int, size: int
    ) -> _Block | None:
        """Remove and return the smallest free block of ``stream`` that fits ``size``.

        Mirrors ``get_free_block``: ``lower_bound`` on (stream, size) finds the
        smallest fitting block of that stream, the lowest address among equal sizes.
        NOTE: with max_split_size set, the C++ also rejects oversize blocks here.
        """
        # (stream, size) sorts before every (stream, size, address, block) entry.
        index = bisect.bisect_left(free_list, (stream, size))
        if index == len(free_list):
            return None
        entry = free_list[index]
        if entry[0] != stream:
            return None
        del free_list[index]
        return entry[3]

    def _alloc_segment(self, segment_bytes: int, stream: int, is_small: bool) -> _Block | None:
        """Create a segment of ``segment_bytes`` and return its single free block.

        Mirrors ``alloc_block``: returns None when the segment would take reserved
        bytes past ``capacity_bytes``, as the C++ does for a failed cudaMalloc or
        for a request over the fraction set by ``set_per_process_memory_fraction``.
        The new block is not in the free list, as in the C++.
        """
        if self.capacity_bytes is not None and self.reserved_bytes + segment_bytes > self.capacity_bytes:
            return None
        block = _Block(self._next_address, segment_bytes, stream, is_small)
        self._next_address += segment_bytes
        self._segments[block.address] = _Segment(block)
        self.reserved_bytes += segment_bytes
        if self.reserved_bytes > self.peak_reserved_bytes:
            self.peak_reserved_bytes = self.reserved_bytes
        return block

    @staticmethod
    def _should_split(block: _Block, size: int) -> bool:
        """Decide whether to split off the part of ``block`` beyond ``size``.

        Mirrors ``should_split``: a small-pool block splits when at least 512
        bytes would remain, a large-pool block only when more than 1 MiB would.
        Otherwise the whole block is handed out and counted as allocated.
        NOTE: with max_split_size set, large requests of that size or more never split.
        NOTE: with expandable segments, large blocks follow the small-pool rule.
        """
        remaining = block.size - size
        if block.is_small:
            return remaining >= MIN_BLOCK_BYTES
        return remaining > SMALL_SIZE_BYTES

    def _split(self, block: _Block, size: int) -> None:
        """Shrink ``block`` to ``size`` and cache the rest as a free block after it.

        The C++ (``alloc_found_block``) gives the lower part to a new Block and
        keeps the old one as the remainder. Here the old object keeps the lower
        part so that a segment's head never changes. Sizes and addresses are the same.
        """
        remainder = _Block(block.address + size, block.size - size, block.stream, block.is_small)
        remainder.prev = block
        remainder.next = block.next
        if block.next is not None:
            block.next.prev = remainder
        block.next = remainder
        block.size = size
        self._insert_free(remainder)

    def _free_block(self, block: _Block) -> None:
        """Merge ``block`` with its free neighbours and cache the result.

        Mirrors ``free_block`` and ``try_merge_blocks``. Neighbours are linked only
        within a segment, so blocks of different segments never merge.
        """
        prev = block.prev
        if prev is not None and not prev.allocated:
            self._remove_free(prev)
            prev.size += block.size
            prev.next = block.next
            if block.next is not None:
                block.next.prev = prev
            block = prev

        following = block.next
        if following is not None and not following.allocated:
            self._remove_free(following)
            block.size += following.size
            block.next = following.next
            if following.next is not None:
                following.next.prev = block

        self._insert_free(block)

    def _release_cached_blocks(self) -> None:
        """Release every segment whose single block is free, in both pools and all streams.

        Mirrors ``release_cached_blocks`` and ``release_blocks``: a free block with
        no neighbours spans its whole segment, which is then released (cudaFree).
        Segments with any allocated block stay, whatever their free space.
        """
        for free_list in (self._free_large, self._free_small):
            still_cached = []
            for entry in free_list:
                block = entry[3]
                if block.prev is None and block.next is None:
                    del self._segments[block.address]
                    self.reserved_bytes -= block.size
                else:
                    still_cached.append(entry)
            free_list[:] = still_cached

    def _insert_free(self, block: _Block) -> None:
        free_list = self._free_small if block.is_small else self._free_large
        bisect.insort(free_list, (block.stream, block.size, block.address, block))

    def _remove_free(self, block: _Block) -> None:
        free_list = self._free_small if block.is_small else self._free_large
        # (stream, size, address) sorts just before its own 4-tuple entry.
        index = bisect.bisect_left(free_list, (block.stream, block.size, block.address))
        del free_list[index]
