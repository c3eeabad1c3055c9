"""Tests for the CUDA caching allocator model in workers/allocator.py.

Each rule gets a hand-worked case, with the arithmetic in a comment. Sizes use
KiB = 1024 and MiB = 1_048_576 bytes.
"""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from workers.allocator import (
    AllocatorOutOfMemory,
    BlockInfo,
    CachingAllocatorModel,
    allocation_size,
    round_size,
)

KiB = 1024
MiB = 1024 * 1024


def block_layout(model: CachingAllocatorModel) -> list[list[tuple[int, bool]]]:
    """Return each segment's blocks as (size_bytes, allocated) pairs, in address order."""
    return [[(b.size_bytes, b.allocated) for b in s.blocks] for s in model.segments()]


def check_invariants(model: CachingAllocatorModel) -> None:
    segments = model.segments()
    assert model.allocated_bytes <= model.reserved_bytes
    assert sum(s.size_bytes for s in segments) == model.reserved_bytes
    allocated_in_blocks = sum(b.size_bytes for s in segments for b in s.blocks if b.allocated)
    assert allocated_in_blocks == model.allocated_bytes
    assert model.peak_allocated_bytes >= model.allocated_bytes
    assert model.peak_reserved_bytes >= model.reserved_bytes
    for segment in segments:
        # The blocks tile the segment exactly.
        assert sum(b.size_bytes for b in segment.blocks) == segment.size_bytes
        assert all(b.size_bytes > 0 and b.size_bytes % 512 == 0 for b in segment.blocks)
        # Freed neighbours always merge, so two free blocks are never adjacent.
        for left, right in zip(segment.blocks, segment.blocks[1:]):
            assert left.allocated or right.allocated
        assert segment.pool in ("small", "large")
    addresses = [s.address for s in segments]
    assert addresses == sorted(addresses)


def test_round_size_rounds_to_512():
    # 1 byte -> ceil(1 / 512) * 512 = 512
    assert round_size(1) == 512
    # 513 bytes -> ceil(513 / 512) * 512 = 2 * 512 = 1024
    assert round_size(513) == 1024
    # exact multiples stay: 512, 1024 and 1 MiB = 2048 * 512
    assert round_size(512) == 512
    assert round_size(1024) == 1024
    assert round_size(MiB) == MiB
    # 0 < kMinBlockSize, so the C++ round_size returns 512 too
    assert round_size(0) == 512


def test_malloc_zero_bytes_allocates_nothing():
    model = CachingAllocatorModel()
    handle = model.malloc(0)
    # The real allocator returns a null pointer: no block, no segment.
    assert model.allocated_bytes == 0
    assert model.reserved_bytes == 0
    assert model.segments() == []
    model.free(handle)
    assert model.allocated_bytes == 0


def test_allocation_size_boundaries():
    # up to kSmallSize = 1 MiB -> kSmallBuffer = 2 MiB
    assert allocation_size(1) == 2 * MiB
    assert allocation_size(MiB) == 2 * MiB
    # 1 MiB + 1 rounds to 1 MiB + 512 > 1 MiB and < 10 MiB -> kLargeBuffer = 20 MiB
    assert allocation_size(MiB + 1) == 20 * MiB
    # 10 MiB - 512 is already a multiple of 512 and < kMinLargeAlloc -> 20 MiB
    assert allocation_size(10 * MiB - 512) == 20 * MiB
    # 10 MiB - 1 rounds to 10 MiB first, which is not < 10 MiB -> 10 MiB segment
    assert allocation_size(10 * MiB - 1) == 10 * MiB
    # 10 MiB = kMinLargeAlloc -> rounded up to a multiple of 2 MiB = 10 MiB
    assert allocation_size(10 * MiB) == 10 * MiB
    # 10 MiB + 1 -> 10 MiB + 512 -> ceil(/ 2 MiB) * 2 MiB = 12 MiB
    assert allocation_size(10 * MiB + 1) == 12 * MiB


def test_pool_boundary_at_one_mib():
    model = CachingAllocatorModel()
    model.malloc(MiB)
    model.malloc(MiB + 1)
    small, large = model.segments()
    # 1 MiB <= kSmallSize goes to the small pool in a 2 MiB segment.
    assert small.pool == "small"
    assert small.size_bytes == 2 * MiB
    # 1 MiB + 1 rounds to 1 MiB + 512 > kSmallSize: large pool, 20 MiB segment.
    assert large.pool == "large"
    assert large.size_bytes == 20 * MiB


def test_small_requests_carve_two_mib_segments():
    model = CachingAllocatorModel()
    for _ in range(4):
        model.malloc(512 * KiB)
    # 4 * 512 KiB = 2 MiB fills exactly one 2 MiB segment.
    assert block_layout(model) == [[(512 * KiB, True)] * 4]
    assert model.reserved_bytes == 2 * MiB
    model.malloc(512 * KiB)
    # The fifth request needs a second 2 MiB segment: reserved 2 * 2 MiB = 4 MiB.
    assert model.reserved_bytes == 4 * MiB
    assert block_layout(model)[1] == [(512 * KiB, True), (3 * 512 * KiB, False)]
    # allocated = 5 * 512 KiB = 2.5 MiB
    assert model.allocated_bytes == 5 * 512 * KiB


def test_under_10_mib_uses_20_mib_segment():
    model = CachingAllocatorModel()
    model.malloc(5 * MiB)
    # 5 MiB < kMinLargeAlloc = 10 MiB -> kLargeBuffer = 20 MiB segment.
    assert model.reserved_bytes == 20 * MiB
    # 20 MiB - 5 MiB = 15 MiB remain, > 1 MiB, so the block splits.
    assert block_layout(model) == [[(5 * MiB, True), (15 * MiB, False)]]
    assert model.allocated_bytes == 5 * MiB
    model.malloc(5 * MiB)
    # The second request reuses the 15 MiB remainder: reserved stays 20 MiB.
    assert model.reserved_bytes == 20 * MiB
    assert block_layout(model) == [[(5 * MiB, True), (5 * MiB, True), (10 * MiB, False)]]


def test_large_request_rounds_to_two_mib():
    model = CachingAllocatorModel()
    model.malloc(10 * MiB + 1)
    # 10 MiB + 1 -> 10 MiB + 512 -> segment ceil(/ 2 MiB) * 2 MiB = 12 MiB.
    assert model.reserved_bytes == 12 * MiB
    # 12 MiB - (10 MiB + 512) = 2 MiB - 512 > 1 MiB remains, so it splits.
    assert block_layout(model) == [[(10 * MiB + 512, True), (2 * MiB - 512, False)]]
    assert model.allocated_bytes == 10 * MiB + 512


def test_best_fit_picks_smallest_free_block():
    model = CachingAllocatorModel()
    big = model.malloc(30 * MiB)  # a 30 MiB segment
    small = model.malloc(12 * MiB)  # a 12 MiB segment
    model.free(big)
    model.free(small)
    # Free blocks: 30 MiB and 12 MiB. Reserved 30 + 12 = 42 MiB.
    assert model.reserved_bytes == 42 * MiB

    model.malloc(11 * MiB)
    # 11 MiB fits both. Best fit takes the 12 MiB block. 12 - 11 = 1 MiB
    # remains, which is not > 1 MiB, so the whole 12 MiB block is allocated.
    assert block_layout(model) == [[(30 * MiB, False)], [(12 * MiB, True)]]
    assert model.allocated_bytes == 12 * MiB
    assert model.reserved_bytes == 42 * MiB

    model.malloc(11 * MiB)
    # Only the 30 MiB block is left. 30 - 11 = 19 MiB > 1 MiB remain: split.
    assert block_layout(model) == [[(11 * MiB, True), (19 * MiB, False)], [(12 * MiB, True)]]
    # allocated = 12 + 11 = 23 MiB
    assert model.allocated_bytes == 23 * MiB


def test_large_split_needs_over_one_mib_left():
    unsplit = CachingAllocatorModel()
    unsplit.malloc(19 * MiB)
    # 19 MiB -> segment ceil(19 / 2) * 2 MiB = 20 MiB. 20 - 19 = 1 MiB remains,
    # not > kSmallSize, so the whole 20 MiB block is handed out and counted.
    assert block_layout(unsplit) == [[(20 * MiB, True)]]
    assert unsplit.allocated_bytes == 20 * MiB

    split = CachingAllocatorModel()
    split.malloc(19 * MiB - 512)
    # 20 MiB - (19 MiB - 512) = 1 MiB + 512 > 1 MiB remains: split.
    assert block_layout(split) == [[(19 * MiB - 512, True), (MiB + 512, False)]]
    assert split.allocated_bytes == 19 * MiB - 512


def test_small_split_needs_512_bytes_left():
    model = CachingAllocatorModel()
    model.malloc(MiB)
    # 2 MiB - 1 MiB = 1 MiB >= 512 remains: split.
    assert block_layout(model) == [[(MiB, True), (MiB, False)]]
    model.malloc(MiB - 512)
    # 1 MiB - (1 MiB - 512) = 512 >= 512 remains: the small pool still splits,
    # where a large-pool block would be handed out whole.
    assert block_layout(model) == [[(MiB, True), (MiB - 512, True), (512, False)]]
    model.malloc(1)
    # 1 byte -> 512, which takes the 512-byte block exactly: 0 remains, no split.
    assert block_layout(model) == [[(MiB, True), (MiB - 512, True), (512, True)]]
    # allocated = 1 MiB + (1 MiB - 512) + 512 = 2 MiB, reserved one 2 MiB segment
    assert model.allocated_bytes == 2 * MiB
    assert model.reserved_bytes == 2 * MiB


def test_free_merges_neighbours_in_segment():
    model = CachingAllocatorModel()
    a, b, c = (model.malloc(512 * KiB) for _ in range(3))
    # One 2 MiB segment: a, b, c of 512 KiB and a 512 KiB free remainder.
    assert block_layout(model) == [[(512 * KiB, True)] * 3 + [(512 * KiB, False)]]

    model.free(c)
    # c merges with the free remainder: 512 + 512 = 1024 KiB.
    assert block_layout(model) == [[(512 * KiB, True), (512 * KiB, True), (MiB, False)]]
    model.free(a)
    # a has no free neighbour (b is allocated), so it stays on its own.
    assert block_layout(model) == [[(512 * KiB, False), (512 * KiB, True), (MiB, False)]]
    model.free(b)
    # b merges with a before it and the 1 MiB after it: 512 + 512 + 1024 KiB = 2 MiB.
    assert block_layout(model) == [[(2 * MiB, False)]]
    assert model.allocated_bytes == 0


def test_free_never_merges_across_segments():
    model = CachingAllocatorModel()
    first = model.malloc(3 * 512 * KiB)  # 1.5 MiB, large pool: a 20 MiB segment
    second = model.malloc(30 * MiB)
    model.free(first)
    model.free(second)
    # The segments are adjacent in the model's address space, yet each keeps
    # its own single free block: 20 MiB and 30 MiB.
    segments = model.segments()
    assert segments[0].address + segments[0].size_bytes == segments[1].address
    assert block_layout(model) == [[(20 * MiB, False)], [(30 * MiB, False)]]
    assert model.reserved_bytes == 50 * MiB


def test_reserved_stays_until_empty_cache():
    model = CachingAllocatorModel()
    handle = model.malloc(5 * MiB)
    model.free(handle)
    # The 20 MiB segment stays cached after the free.
    assert model.allocated_bytes == 0
    assert model.reserved_bytes == 20 * MiB
    model.empty_cache()
    assert model.reserved_bytes == 0
    assert model.segments() == []


def test_empty_cache_releases_only_free_segments():
    model = CachingAllocatorModel()
    live = model.malloc(5 * MiB)  # 20 MiB segment, stays in use
    # 16 MiB does not fit the 15 MiB free tail of that segment: a 16 MiB segment.
    dead = model.malloc(16 * MiB)
    small = model.malloc(4 * KiB)  # 2 MiB small segment
    model.free(dead)
    model.free(small)
    # reserved = 20 + 16 + 2 = 38 MiB before emptying
    assert model.reserved_bytes == 38 * MiB
    model.empty_cache()
    # Only the 20 MiB segment holding `live` remains, with its 15 MiB free tail.
    assert model.reserved_bytes == 20 * MiB
    assert block_layout(model) == [[(5 * MiB, True), (15 * MiB, False)]]
    model.free(live)
    assert model.reserved_bytes == 20 * MiB


def test_capacity_pressure_releases_cache_and_retries():
    model = CachingAllocatorModel(capacity_bytes=24 * MiB)
    cached = model.malloc(12 * MiB)  # 12 MiB segment
    model.free(cached)
    handle = model.malloc(16 * MiB)
    # The cached 12 MiB block is too small for 16 MiB. A new 16 MiB segment
    # needs 12 + 16 = 28 MiB > 24 MiB, so the model releases the cached
    # segment (reserved 0) and retries once: 0 + 16 = 16 MiB <= 24 MiB.
    assert model.reserved_bytes == 16 * MiB
    assert block_layout(model) == [[(16 * MiB, True)]]
    assert model.num_alloc_retries == 1
    assert model.num_ooms == 0
    # Reserved never reached 28 MiB: the peak is max(12, 16) = 16 MiB.
    assert model.peak_reserved_bytes == 16 * MiB
    model.free(handle)


def test_out_of_memory_raises_torch_error():
    model = CachingAllocatorModel(capacity_bytes=24 * MiB)
    model.malloc(12 * MiB)  # 12 MiB segment, kept alive
    cached_small = model.malloc(4 * KiB)  # 2 MiB small segment
    model.free(cached_small)
    # A 16 MiB segment needs 14 + 16 = 30 MiB > 24 MiB. Releasing the cached
    # small segment leaves 12 + 16 = 28 MiB, still > 24 MiB: out of memory.
    with pytest.raises(AllocatorOutOfMemory) as caught:
        model.malloc(16 * MiB)
    error = caught.value
    assert isinstance(error, torch.OutOfMemoryError)
    message = str(error)
    assert "out of memory" in message
    assert str(16 * MiB) in message  # request
    assert str(12 * MiB) in message  # reserved after the release
    assert str(24 * MiB) in message  # capacity
    assert error.request_bytes == 16 * MiB
    assert error.reserved_bytes == 12 * MiB
    assert error.capacity_bytes == 24 * MiB
    # The cached small segment stays released, as in the C++.
    assert model.reserved_bytes == 12 * MiB
    assert model.allocated_bytes == 12 * MiB
    assert model.num_alloc_retries == 1
    assert model.num_ooms == 1


def test_out_of_memory_error_pickles():
    error = AllocatorOutOfMemory(16 * MiB, 16 * MiB, 0, 12 * MiB, 12 * MiB, 24 * MiB)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, AllocatorOutOfMemory)
    assert str(copy) == str(error)
    assert copy.capacity_bytes == 24 * MiB


def test_request_over_one_exbibyte_raises():
    model = CachingAllocatorModel()
    # NativeCachingAllocator::allocate rejects 2**60 bytes and more.
    with pytest.raises(AllocatorOutOfMemory):
        model.malloc(2**60)
    assert model.reserved_bytes == 0


def test_peaks_and_reset_peak():
    model = CachingAllocatorModel()
    a = model.malloc(5 * MiB)  # allocated 5 MiB, reserved 20 MiB
    b = model.malloc(30 * MiB)  # allocated 35 MiB, reserved 50 MiB
    model.free(b)
    # allocated 5 MiB now, but the peak stays at 5 + 30 = 35 MiB.
    assert model.allocated_bytes == 5 * MiB
    assert model.peak_allocated_bytes == 35 * MiB
    assert model.peak_reserved_bytes == 50 * MiB
    model.empty_cache()
    # The 30 MiB segment goes: reserved 50 - 30 = 20 MiB, peak still 50 MiB.
    assert model.reserved_bytes == 20 * MiB
    assert model.peak_reserved_bytes == 50 * MiB

    model.reset_peak()
    assert model.peak_allocated_bytes == 5 * MiB
    assert model.peak_reserved_bytes == 20 * MiB
    model.malloc(MiB)  # small pool: allocated 6 MiB, reserved 22 MiB
    assert model.peak_allocated_bytes == 6 * MiB
    assert model.peak_reserved_bytes == 22 * MiB
    model.free(a)
    assert model.peak_allocated_bytes == 6 * MiB


def test_streams_do_not_share_blocks():
    model = CachingAllocatorModel()
    handle = model.malloc(5 * MiB, stream=0)
    model.free(handle)
    model.malloc(5 * MiB, stream=1)
    # Stream 1 cannot take stream 0's cached block: a second 20 MiB segment.
    assert model.reserved_bytes == 40 * MiB
    assert [s.stream for s in model.segments()] == [0, 1]
    model.malloc(5 * MiB, stream=0)
    # Stream 0 reuses its own cached block: reserved stays 40 MiB.
    assert model.reserved_bytes == 40 * MiB
    assert model.allocated_bytes == 10 * MiB


def test_free_rejects_unknown_and_repeated_handles():
    model = CachingAllocatorModel()
    handle = model.malloc(4 * KiB)
    model.free(handle)
    with pytest.raises(ValueError, match="invalid handle"):
        model.free(handle)
    with pytest.raises(ValueError, match="invalid handle"):
        model.free(12345)


def test_model_rejects_invalid_arguments():
    with pytest.raises(ValueError, match="capacity_bytes"):
        CachingAllocatorModel(capacity_bytes=-1)
    model = CachingAllocatorModel()
    with pytest.raises(ValueError, match="nbytes"):
        model.malloc(-1)
    with pytest.raises(TypeError):
        model.malloc(1.5)


def test_segments_report_blocks_in_address_order():
    model = CachingAllocatorModel()
    model.malloc(3 * MiB)
    (segment,) = model.segments()
    # 3 MiB < 10 MiB -> 20 MiB segment, split as 3 MiB + 17 MiB.
    assert segment.blocks == (BlockInfo(3 * MiB, True), BlockInfo(17 * MiB, False))
    assert segment.pool == "large"
    assert segment.stream == 0


@pytest.mark.parametrize("capacity_bytes", [None, 96 * MiB])
def test_random_replay_keeps_invariants(capacity_bytes):
    rng = random.Random(20240611)
    model = CachingAllocatorModel(capacity_bytes=capacity_bytes)
    live: list[int] = []
    sizes = [0, 1, 511, 512, 4 * KiB, 100 * KiB, MiB, MiB + 1, 3 * MiB, 9 * MiB, 12 * MiB, 25 * MiB]
    for step in range(3000):
        if live and rng.random() < 0.45:
            model.free(live.pop(rng.randrange(len(live))))
        elif step % 500 == 499:
            model.empty_cache()
        else:
            nbytes = rng.choice(sizes) + rng.randrange(0, 4096)
            try:
                live.append(model.malloc(nbytes, stream=rng.randrange(2)))
            except AllocatorOutOfMemory:
                assert capacity_bytes is not None
        check_invariants(model)
        if capacity_bytes is not None:
            assert model.reserved_bytes <= capacity_bytes
    for handle in live:
        model.free(handle)
    assert model.allocated_bytes == 0
    model.empty_cache()
    assert model.reserved_bytes == 0
    assert model.segments() == []
