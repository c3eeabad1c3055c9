import pytest
import torch

from workers.tracker import StorageTracker, round_block


@pytest.mark.parametrize(
    ("nbytes", "expected"),
    [(0, 0), (1, 512), (512, 512), (513, 1024), (4096, 4096)],
)
def test_round_block(nbytes, expected):
    assert round_block(nbytes) == expected


def test_tracker_counts_storage_once_per_view():
    with StorageTracker() as tracker:
        x = torch.zeros(1000)  # 4000 B, rounded up to 4096
        view = x.view(10, 100)
        assert tracker.allocated_bytes == 4096
        del x, view
    assert tracker.allocated_bytes == 0
    assert tracker.peak_allocated_bytes == 4096


def test_tracker_releases_on_free_and_keeps_peak():
    with StorageTracker() as tracker:
        a = torch.ones(256)  # 1024 B
        b = torch.ones(256)
        del a
        c = torch.ones(128)  # 512 B
        assert tracker.allocated_bytes == 1024 + 512
    assert tracker.peak_allocated_bytes == 2048
    del b, c


def test_tracker_limit_raises_out_of_memory():
    with StorageTracker(limit_bytes=4096, card_name="tiny") as tracker:
        kept = torch.zeros(512)  # 2048 B
        with pytest.raises(torch.OutOfMemoryError, match="Emulated card 'tiny' out of memory: tried to allocate 4096 bytes"):
            torch.zeros(1024)  # 4096 B more would pass 4096
        assert tracker.allocated_bytes == 2048
    del kept


def test_tracker_paused_ignores_new_storage():
    with StorageTracker() as tracker:
        with tracker.paused():
            host = torch.zeros(1024)
        assert tracker.allocated_bytes == 0
        device_copy = host.clone()
        assert tracker.allocated_bytes == 4096
    del host, device_copy


def test_tracker_adopt_counts_existing_tensors():
    weight = torch.zeros(1024)
    with StorageTracker() as tracker:
        tracker.adopt([weight, weight.view(2, 512)])
        assert tracker.allocated_bytes == 4096
    del weight
    assert tracker.allocated_bytes == 0


def test_tracker_follows_resize():
    with StorageTracker() as tracker:
        operand = torch.ones(1024)  # 4096 B
        out = torch.empty(0)
        torch.add(operand, 1, out=out)  # resizes out from 0 to 4096 B
        assert tracker.allocated_bytes == 4096 + 4096
        del out
        assert tracker.allocated_bytes == 4096  # released at its resized size
    del operand
