"""Text, tabular and timm trials on emulated and simulated cards."""

from __future__ import annotations

import warnings

import pytest

from planner.cards import Card, GiB, MiB
from planner.grid import TrialSpec
from workers.backends import EmulatedBackend
from workers.trial import run_simulated_trial, run_trial

warnings.filterwarnings("ignore", category=UserWarning)

ROOMY = Card("roomy", 16 * GiB)


def text(task: str = "text_classifier", **overrides) -> TrialSpec:
    values = dict(task=task, arch="AWD_LSTM", image_size=None, batch_size=4, seq_len=100, vocab_size=1000)
    values["classes"] = 2 if task == "text_classifier" else None
    values.update(overrides)
    return TrialSpec(**values)


def table(**overrides) -> TrialSpec:
    values = dict(
        task="tabular", arch="TabularModel", image_size=None, batch_size=64, classes=2,
        n_cont=8, n_cat=4, cardinality=10, layers=(200, 100),
    )
    values.update(overrides)
    return TrialSpec(**values)


def both(point: TrialSpec):
    """Run ``point`` emulated and simulated on a roomy card."""
    real = run_trial(point, EmulatedBackend(ROOMY))
    [traced] = run_simulated_trial(point, [ROOMY])
    assert real.status == "fits", real.error
    assert traced.status == "fits", traced.error
    return real, traced


def assert_agree(real, traced) -> None:
    assert traced.peak_allocated_bytes == pytest.approx(real.peak_allocated_bytes, rel=0.01)
    assert traced.peak_reserved_bytes == pytest.approx(real.peak_reserved_bytes, rel=0.02)
    assert real.optimizer_steps >= 2
    assert real.valid_batches_run == 1


def test_classifier_agrees_and_grows_with_document_length():
    short = both(text(seq_len=72))
    long = both(text(seq_len=144))

    for real, traced in (short, long):
        assert_agree(real, traced)
    # A second chunk of 72 tokens per document, kept for the backward pass.
    assert long[0].peak_allocated_bytes > short[0].peak_allocated_bytes + 20 * MiB


def test_language_model_agrees_bf16_not_above_fp32():
    fp32 = both(text("language_model", seq_len=72))
    bf16 = both(text("language_model", seq_len=72, precision="bf16"))

    for real, traced in (fp32, bf16):
        assert_agree(real, traced)
    # Casting the weights inside every time step kept 72 copies of them: four times fp32's peak.
    assert bf16[0].peak_allocated_bytes <= fp32[0].peak_allocated_bytes


@pytest.mark.parametrize("point", [table(), table(precision="fp16", cardinality=5000)], ids=["fp32", "fp16"])
def test_tabular_agrees(point):
    assert_agree(*both(point))


def simulated_peak(point: TrialSpec) -> int:
    [result] = run_simulated_trial(point, [ROOMY])
    assert result.status == "fits", result.error
    return result.peak_allocated_bytes


def test_vocabulary_sizes_the_language_model():
    small = simulated_peak(text("language_model", seq_len=72, vocab_size=1000))
    large = simulated_peak(text("language_model", seq_len=72, vocab_size=20_000))

    # 19,000 more rows of 400 in the embedding (tied to the decoder's weights),
    # as fp32 weights, gradients and two Adam moments.
    assert large - small > 19_000 * 400 * 4 * 4


def test_cardinality_sizes_the_embeddings():
    few = simulated_peak(table(n_cat=1, cardinality=10))
    many = simulated_peak(table(n_cat=1, cardinality=50_000))

    # fastai's embedding size rule gives 600 columns at this cardinality: a
    # table of 50,001 x 600 fp32 weights, gradients and two Adam moments.
    assert many - few > 50_000 * 600 * 4 * 4


def test_text_classifier_oom_small_card():
    result = run_trial(text(seq_len=72), EmulatedBackend(Card("small", 300 * MiB)))

    assert result.status == "oom"
    assert result.oom_stage


def test_timm_model_trains_and_simulates():
    pytest.importorskip("timm")
    point = TrialSpec("classification", "timm/resnet18", 32, 4)

    real, traced = both(point)

    assert traced.peak_allocated_bytes == pytest.approx(real.peak_allocated_bytes, rel=0.01)
    # timm's resnet18 has the parameters of torchvision's (11.7 million, 45 MiB in fp32).
    assert real.peak_allocated_bytes > 4 * 45 * MiB
