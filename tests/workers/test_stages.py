"""Peaks that hide after the first stage of a trial: fine_tune, progressive resizing, validation."""

import warnings

import pytest

from planner.cards import Card, MiB
from planner.grid import TrialSpec
from workers.backends import EmulatedBackend
from workers.trial import run_simulated_trial, run_trial

warnings.filterwarnings("ignore", category=UserWarning)

ROOMY = Card("roomy", 64 * 1024 * MiB)


def spec(**overrides) -> TrialSpec:
    values = dict(task="classification", arch="resnet18", image_size=32, batch_size=4)
    values.update(overrides)
    return TrialSpec(**values)


def card_just_below(point: TrialSpec) -> Card:
    """The largest card, in 2 MiB steps, on which the simulated trial runs out of memory.

    Under pressure the allocator releases cached segments and retries, so a
    trial can fit in less than its peak reserved memory without pressure.
    One trace replays on every candidate size.
    """
    [roomy] = run_simulated_trial(point, [ROOMY])
    assert roomy.status == "fits", roomy.error
    low = roomy.peak_allocated_bytes // (2 * MiB) * 2 * MiB
    sizes = range(low, roomy.peak_reserved_bytes + 2 * MiB, 2 * MiB)
    results = run_simulated_trial(point, [Card(f"{size}", size) for size in sizes])
    failing = [size for size, result in zip(sizes, results) if result.status == "oom"]
    return Card("tight", max(failing))


@pytest.mark.parametrize(
    ("point", "stage_prefix"),
    [
        # The frozen fit trains only the head, so its peak is below the unfrozen fit's.
        (spec(fit="fine_tune"), "unfrozen fit: "),
        # The second stage's images hold nine times the pixels of the first's.
        (spec(later_stages=((96, 8),)), "stage 2 (96px, bs=8): "),
        # Validation at batch 256 runs while the training memory is still held.
        (spec(image_size=64, valid_batch_size=256), "validation"),
    ],
    ids=["fine_tune", "progressive-resizing", "large-validation-batch"],
)
def test_oom_after_first_stage_names_stage(point, stage_prefix):
    tight = card_just_below(point)
    result = run_trial(point, EmulatedBackend(tight))
    assert result.status == "oom", result.error
    # Everything before this stage fitted, so a probe of the first stage alone would say "fits".
    assert result.oom_stage.startswith(stage_prefix)
    assert result.train_batches_run >= 2


def test_fine_tune_runs_both_fits():
    result = run_trial(spec(fit="fine_tune", train_batches=2, valid_batches=1), EmulatedBackend(ROOMY))
    assert result.status == "fits", result.error
    # Two fits of 2 train and 1 validation batch each.
    assert result.train_batches_run == 4
    assert result.valid_batches_run == 2
    assert result.optimizer_steps == 4


def test_simulated_peak_stage_names_unfrozen_fit():
    [result] = run_simulated_trial(spec(fit="fine_tune"), [ROOMY])
    assert result.peak_stage.startswith("unfrozen fit: ")


def test_gradient_accumulation_steps_twice():
    # With 3 batches per step, two real optimizer steps need 6 train batches.
    result = run_trial(spec(grad_accumulation=3), EmulatedBackend(ROOMY))
    assert result.status == "fits", result.error
    assert result.optimizer_steps == 2
    assert result.train_batches_run == 6


def test_lr_find_runs_emulated_but_not_simulated():
    emulated = run_trial(spec(fit="lr_find"), EmulatedBackend(ROOMY))
    assert emulated.status == "fits", emulated.error
    assert emulated.train_batches_run == 2
    [simulated] = run_simulated_trial(spec(fit="lr_find"), [ROOMY])
    # lr_find saves the weights to a file, which fake tensors cannot.
    assert simulated.status == "error"
    assert simulated.error.startswith("cannot be simulated: ")
