"""Learner factories: the user's own Learner, probed with its largest batches."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import pytest

from planner.cards import Card, GiB, MiB
from planner.grid import TrialSpec
from workers.backends import EmulatedBackend
from workers.trial import run_simulated_trial, run_trial

warnings.filterwarnings("ignore", category=UserWarning)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROOMY = Card("roomy", 8 * GiB)
FACTORY = "own_learner:make_learner"


def spec(batch_size: int = 16, factory: str = FACTORY, paths: tuple[str, ...] = (str(EXAMPLES),), scan_batches: int = 32, **params) -> TrialSpec:
    return TrialSpec(
        "learner",
        factory,
        None,
        batch_size,
        classes=None,
        params=tuple(params.items()),
        learner_paths=paths,
        scan_batches=scan_batches,
    )


def emulated(point: TrialSpec, card: Card = ROOMY):
    return run_trial(point, EmulatedBackend(card))


def test_mixed_lengths_peak_of_long_texts():
    # 1% of the reviews are 1000 tokens long, the rest at most 60.
    mixed = emulated(spec(long_share=0.01, max_tokens=1000))
    only_long = emulated(spec(long_share=1.0, max_tokens=1000))
    only_short = emulated(spec(long_share=0.0, max_tokens=1000))

    assert mixed.status == only_long.status == only_short.status == "fits"
    # Every batch is padded to its longest review: the batch of the longest
    # reviews is as large as a batch of long reviews only.
    assert mixed.peak_reserved_bytes == only_long.peak_reserved_bytes
    assert mixed.peak_allocated_bytes > 1.5 * only_short.peak_allocated_bytes
    assert mixed.probe_batches.startswith("train: the 16 longest of 800 items (batch 16x1000 + 16, length 60-1000); ")


def test_mixed_lengths_oom_like_long_texts():
    tight = Card("tight", (emulated(spec(long_share=1.0, max_tokens=1000)).peak_reserved_bytes) - 8 * MiB)

    assert emulated(spec(long_share=0.0, max_tokens=1000), tight).status == "fits"
    assert emulated(spec(long_share=0.01, max_tokens=1000), tight).status == "oom"


def test_plain_loader_is_scanned_for_its_largest_batch():
    sys.path.insert(0, str(EXAMPLES))
    try:
        from own_learner import review_lengths
    finally:
        sys.path.remove(str(EXAMPLES))
    # In dataset order, the first training batch with a 1000-token review is the sixth.
    train = review_lengths(1000, 60, 1000, 0.005)[:800]
    assert [index for index in range(50) if train[16 * index : 16 * index + 16].max() == 1000][0] == 5
    point = dict(loader="plain", long_share=0.005, max_tokens=1000)

    too_few = emulated(spec(scan_batches=5, **point))
    scanned = emulated(spec(scan_batches=50, **point))
    sorted_loader = emulated(spec(long_share=0.005, max_tokens=1000))

    assert too_few.probe_batches.startswith("train: batch ")
    assert "the largest of 5 of 50 batches scanned" in too_few.probe_batches
    assert scanned.probe_batches.startswith("train: batch 6 (16x1000 + 16, 16,016 elements), the largest of all 50 batches scanned")
    # The scan found a batch as large as the one SortedDL builds from its longest reviews.
    assert scanned.peak_reserved_bytes == sorted_loader.peak_reserved_bytes
    assert too_few.peak_allocated_bytes < scanned.peak_allocated_bytes


def test_simulated_factory_trial_agrees_with_emulated():
    point = spec(long_share=0.02, max_tokens=500, batch_size=32)

    began = time.perf_counter()
    real = emulated(point)
    [traced] = run_simulated_trial(point, [ROOMY])
    wall = time.perf_counter() - began

    # Each trial's duration is part of the time both took.
    assert 0 < real.seconds < wall
    assert 0 < traced.seconds < wall
    assert traced.status == real.status == "fits"
    assert traced.peak_allocated_bytes == pytest.approx(real.peak_allocated_bytes, rel=0.01)
    assert traced.probe_batches == real.probe_batches


def test_batch_above_training_set_error():
    point = spec(batch_size=900, documents=1000)
    expected = (
        "ValueError: the train DataLoader has 800 items, fewer than one batch of 900, and drops the last partial "
        "batch: lower batch_size, or set dataset_size: 800 on the model entry so that a search stays below it"
    )

    result = emulated(point)
    [traced] = run_simulated_trial(point, [ROOMY])

    assert result.status == "error"
    assert result.error == expected
    # The factory's data fails on any backend: not a simulation problem.
    assert traced.error == expected


def test_dataset_of_one_batch_still_steps_twice():
    # 800 training reviews make one batch of 800; the trial feeds it as often as it needs.
    result = emulated(spec(batch_size=800, max_tokens=200))

    assert result.status == "fits", result.error
    assert result.optimizer_steps >= 2


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("    return 'a learner'\n", "TypeError: the learner factory {module}:make returned a str, not a fastai Learner"),
        ("    raise RuntimeError('dataset folder not found')\n", "RuntimeError: dataset folder not found"),
        (
            "    from torch.utils.data import DataLoader\n"
            "    from fastai.data.core import DataLoaders\n"
            "    from fastai.learner import Learner\n"
            "    import torch\n"
            "    data = [(torch.zeros(3), torch.tensor(0))] * 8\n"
            "    loaders = DataLoaders(DataLoader(data, batch_size=batch_size), DataLoader(data, batch_size=batch_size))\n"
            "    return Learner(loaders, torch.nn.Linear(3, 2), loss_func=torch.nn.CrossEntropyLoss())\n",
            "TypeError: the train DataLoader is a DataLoader, but a learner factory must give fastai DataLoaders "
            "(fastai.data.core.DataLoaders of TfmdDL or DataLoader)",
        ),
    ],
    ids=["not-a-learner", "factory-raises", "torch-dataloader"],
)
def test_factory_failures_are_error_rows(tmp_path, request, body, error):
    # One module name per case: a process imports a module once.
    module = "factory_" + request.node.callspec.id.replace("-", "_")
    (tmp_path / f"{module}.py").write_text(f"def make(batch_size):\n{body}")

    result = emulated(spec(factory=f"{module}:make", paths=(str(tmp_path),)))

    assert result.status == "error"
    assert result.error == error.format(module=module)
