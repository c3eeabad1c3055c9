import gc
import warnings
import weakref

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from torch.optim.optimizer import register_optimizer_step_post_hook

from planner.cards import Card, MiB
from planner.grid import TrialSpec
from workers.backends import EmulatedBackend
from workers.callbacks import StopAfterNBatches
from workers.learners import build_dataloaders, build_learner
from workers.trial import run_trial

warnings.filterwarnings("ignore", category=UserWarning)

BIG = Card("big", 8192 * MiB)
SMALL = Card("small", 100 * MiB)  # fits resnet18's weights (45 MiB) but not grads plus Adam state


def spec(**overrides) -> TrialSpec:
    values = dict(task="classification", arch="resnet18", image_size=32, batch_size=4, classes=10)
    values.update(overrides)
    return TrialSpec(**values)


class CountBatches(Callback):
    """Counts batches independently of the callback under test."""

    order = 90  # before StopAfterNBatches raises in after_batch

    def __init__(self):
        self.train_seen = self.valid_seen = 0

    def after_batch(self):
        if self.learn.training:
            self.train_seen += 1
        else:
            self.valid_seen += 1


def test_stop_after_n_batches_stops_a_longer_fit():
    # Ten train and four validation batches exist; the callback must stop at 3 and 2.
    trial = spec(train_batches=3, valid_batches=2)
    dls = build_dataloaders(trial, train_items=40, valid_items=16, device=torch.device("cpu"))
    learn = build_learner(trial, dls)
    learn.remove_cb(ProgressCallback)
    stop = StopAfterNBatches(3, 2)
    counter = CountBatches()
    steps = []
    learn.fit_one_cycle(1, cbs=[stop, counter, _StepCounter(steps)])
    assert counter.train_seen == 3
    assert counter.valid_seen == 2
    assert len(steps) == 3
    assert stop.optimizer_steps == 3


class _StepCounter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def after_step(self):
        self.steps.append(self.learn.train_iter)


def test_trial_runs_configured_batches():
    result = run_trial(spec(train_batches=3, valid_batches=2), EmulatedBackend(BIG))
    assert result.status == "fits"
    assert result.train_batches_run == 3
    assert result.valid_batches_run == 2
    assert result.batches_run == 5
    assert result.optimizer_steps == 3
    assert result.valid_batch_size == 4  # fastai's default: the train batch size


def test_trial_counts_weights_grads_and_adam_state():
    model = build_learner(spec(), build_dataloaders(spec(), train_items=8, valid_items=4, device=torch.device("cpu"))).model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result = run_trial(spec(), EmulatedBackend(BIG))
    # Weights, gradients and Adam's two moment buffers are all alive in the second step.
    assert result.peak_allocated_bytes >= 4 * weight_bytes
    assert result.peak_allocated_bytes < 6 * weight_bytes


def test_trial_oom_on_small_card():
    result = run_trial(spec(), EmulatedBackend(SMALL))
    assert result.status == "oom"
    assert result.fits is False
    assert result.oom_stage in {"backward", "optimizer step"}
    assert "Emulated card 'small' out of memory" in result.error
    assert result.peak_allocated_bytes <= SMALL.budget_bytes


def test_trial_oom_at_setup_when_weights_do_not_fit():
    result = run_trial(spec(), EmulatedBackend(Card("tiny", 10 * MiB)))
    assert result.status == "oom"
    assert result.oom_stage == "setup"
    assert result.batches_run == 0


def test_trial_error_is_not_oom():
    # AlexNet's first max-pool gets a 1x1 map from 8-pixel images and raises: not an OOM.
    result = run_trial(spec(arch="alexnet", image_size=8), EmulatedBackend(BIG))
    assert result.status == "error"
    assert result.fits is None
    assert result.oom_stage is None
    assert "RuntimeError" in result.error


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_trial_mixed_precision_steps_optimizer(precision):
    result = run_trial(spec(precision=precision), EmulatedBackend(BIG))
    assert result.status == "fits", result.error
    assert result.optimizer_steps >= 2


class _Collector:
    """Collects weak references to every module, activation and optimizer state of a trial."""

    def __init__(self):
        self.refs = []

    def forward_hook(self, module, inputs, output):
        # Parameterless modules can be shared singletons (fastai's Categorize
        # keeps one CrossEntropyLossFlat as a class attribute), so skip them.
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            self.refs.append(weakref.ref(module))
        if isinstance(output, torch.Tensor):
            self.refs.append(weakref.ref(output))

    def step_hook(self, optimizer, args, kwargs):
        self.refs.append(weakref.ref(optimizer))
        for state in optimizer.state.values():
            self.refs.extend(weakref.ref(value) for value in state.values() if isinstance(value, torch.Tensor))


@pytest.mark.parametrize("card", [BIG, SMALL], ids=["fits", "oom"])
def test_trial_leaves_no_tensor_alive(card):
    collector = _Collector()
    forward = torch.nn.modules.module.register_module_forward_hook(collector.forward_hook)
    step = register_optimizer_step_post_hook(collector.step_hook)
    try:
        result = run_trial(spec(), EmulatedBackend(card))
    finally:
        forward.remove()
        step.remove()
    gc.collect()
    assert result.status == ("fits" if card is BIG else "oom")
    assert collector.refs, "the hooks saw no module"
    alive = [ref() for ref in collector.refs if ref() is not None]
    assert alive == []


def test_trial_after_oom_measures_same_peak():
    alone = run_trial(spec(batch_size=8), EmulatedBackend(BIG))
    failed = run_trial(spec(batch_size=8), EmulatedBackend(SMALL))
    after = run_trial(spec(batch_size=8), EmulatedBackend(BIG))
    assert failed.status == "oom"
    assert after.peak_allocated_bytes == alone.peak_allocated_bytes


def test_throughput_callback_times_batches_after_first():
    from workers.callbacks import ThroughputCallback

    trial = spec(train_batches=3, valid_batches=1)
    dls = build_dataloaders(trial, train_items=16, valid_items=4, device=torch.device("cpu"))
    learn = build_learner(trial, dls)
    learn.remove_cb(ProgressCallback)
    timer = ThroughputCallback()
    learn.fit_one_cycle(1, cbs=[StopAfterNBatches(3, 1), timer])
    assert len(timer.batch_ends) == 3
    assert timer.samples == [4, 4, 4]
    assert timer.samples_per_second > 0


def test_emulated_trial_reports_no_throughput():
    # CPU speed does not predict a GPU's, so only measured trials report it.
    assert run_trial(spec(), EmulatedBackend(BIG)).samples_per_second is None
