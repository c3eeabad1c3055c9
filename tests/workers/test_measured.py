import pytest
import torch

from planner.cards import Card
from planner.grid import TrialSpec
from workers.backends import MeasuredBackend
from workers.trial import run_trial

pytestmark = pytest.mark.gpu


def local_card() -> Card:
    properties = torch.cuda.get_device_properties(0)
    return Card(properties.name, properties.total_memory, source="local")


def test_measured_trial_reads_allocator_peaks():
    spec = TrialSpec("classification", "resnet18", 64, 16)
    # cuBLAS keeps its workspaces allocated after the first trial, even after empty_cache().
    run_trial(spec, MeasuredBackend(local_card()))
    baseline = torch.cuda.memory_allocated()
    result = run_trial(spec, MeasuredBackend(local_card()))
    assert result.status == "fits", result.error
    assert result.backend == "measured"
    assert result.peak_allocated_bytes > 0
    assert result.peak_reserved_bytes >= result.peak_allocated_bytes
    assert result.optimizer_steps == 2
    assert result.samples_per_second > 0
    assert torch.cuda.memory_allocated() == baseline  # nothing of the trial stays on the GPU


def test_measured_trial_oom_is_a_result():
    # Cap the allocator at 64 MiB of the card: resnet18's weights, grads and
    # Adam state alone need about 180 MiB.
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(64 * 1024**2 / total)
    try:
        result = run_trial(TrialSpec("classification", "resnet18", 64, 16), MeasuredBackend(local_card()))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert result.status == "oom"
    assert result.oom_stage is not None
    # Only cuBLAS workspaces may stay: at most two handles of 33 MiB each.
    assert torch.cuda.memory_allocated() <= 2 * 33 * 1024**2
