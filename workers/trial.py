"""Run one trial: build the Learner, fit it for a few batches, and report its memory."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from fastai.callback.progress import ProgressCallback
from fastai.callback.training import GradientAccumulation

from planner.cards import UNLIMITED_MEMORY_BYTES, Card
from planner.grid import TrialSpec
from workers.backends import EmulatedBackend, MeasuredBackend
from planner.tasks import LEARNER_TASK
from workers.callbacks import Progress, StageCallback, StopAfterNBatches, ThroughputCallback
from workers.factory import build_factory_learner
from workers.largest_batches import use_largest_batches
from workers.learners import build_dataloaders, build_learner
from workers.oom import is_out_of_memory
from workers.results import TrialResult
from workers.simulated import SimulatedBackend, replay

logger = logging.getLogger(__name__)

# Extra train batches in the synthetic dataset beyond the configured count, so
# that fp16 loss scaling can skip a few overflowing steps and the optimizer
# still steps twice.
_SPARE_TRAIN_BATCHES = {"fp32": 1, "bf16": 1, "fp16": 8}



@dataclass(frozen=True)
class FitOutcome:
    """The end state of a trial's fit, before any backend reads its memory figures."""

    status: str  # "fits", "oom" or "error"
    progress: Progress  # stage and counts when the fit ended or failed
    train_batches_run: int
    valid_batches_run: int
    optimizer_steps: int
    valid_batch_size: int | None
    error: str | None
    seconds: float
    samples_per_second: float | None = None  # measured trials only: CPU backends' speed does not predict a GPU's
    # False when the trial failed before its fit started: building the
    # Learner or reading a factory's batches, which no backend changes.
    fit_started: bool = True
    probe_batches: str | None = None  # a learner factory's trial: which batches it fed, and how they were found

    @property
    def progress_at_end(self) -> Progress:
        """The batches and steps the whole fit ran, as a ``Progress``."""
        return Progress(self.progress.stage, self.train_batches_run, self.valid_batches_run, self.optimizer_steps)


def fit_trial(spec: TrialSpec, backend) -> tuple[FitOutcome, StageCallback]:
    """Fit ``spec`` on ``backend`` for a few batches and return how it ended.

    An out-of-memory error is an outcome (status "oom"); any other exception
    is recorded with its type and message (status "error"). Either way,
    nothing the fit allocated is referenced once this function returns.
    """
    started = time.perf_counter()
    torch.manual_seed(0)
    stage = StageCallback(fit_labels=_fit_labels(spec))
    stop = StopAfterNBatches(spec.train_batches, spec.valid_batches)
    timer = ThroughputCallback(synchronize=True) if backend.name == "measured" else None
    status, message = "fits", None
    valid_batch_size = None
    learn = None
    probe_batches = None
    fit_started = False
    try:
        if spec.task == LEARNER_TASK:
            # The simulated backend's device is meta; the factory's loaders build host batches to fake.
            device = backend.device if backend.device.type != "meta" else torch.device("cpu")
            learn = build_factory_learner(spec, device)
            probe_batches = use_largest_batches(
                learn.dls, spec.scan_batches, _train_batches_needed(spec), spec.valid_batches
            )
        else:
            dls = _dataloaders(spec, spec.image_size, spec.batch_size, backend)
            learn = build_learner(spec, dls)
            del dls
        valid_batch_size = learn.dls.valid.bs
        if spec.precision != "fp32":
            learn.add_cb(backend.mixed_precision(spec.precision))
        if spec.grad_accumulation > 1:
            learn.add_cb(GradientAccumulation(n_acc=spec.effective_batch_size))
        learn.remove_cb(ProgressCallback)
        backend.prepare(learn)
        callbacks = [stage, stop] + ([timer] if timer else [])
        fit_started = True
        with _cpu_rnn_kernels(learn.model, backend), backend.tracking(learn, lambda: stage.position):
            _run_fits(spec, learn, backend, callbacks)
        if min(stop.steps_per_fit, default=0) < 2:
            status = "error"
            message = (
                f"the optimizer stepped {stop.steps_per_fit} times per fit in "
                f"{stop.train_batches_run} train batches, fewer than the 2 needed to allocate its state"
            )
    except Exception as error:  # classified below; the outcome carries it
        message = f"{type(error).__name__}: {error}"
        if is_out_of_memory(error):
            status = "oom"
        else:
            status = "error"
            logger.debug("trial %s failed", spec, exc_info=True)
    finally:
        # Drop every reference to the trial's tensors before reading the
        # cache state: fastai's Learner and its callbacks form reference cycles.
        learn = None
        stage.learn = stop.learn = None
        if timer is not None:
            timer.learn = None
        gc.collect()

    outcome = FitOutcome(
        status=status,
        progress=stage.history[-1],
        train_batches_run=stop.train_batches_run,
        valid_batches_run=stop.valid_batches_run,
        optimizer_steps=stop.optimizer_steps,
        valid_batch_size=valid_batch_size,
        error=message,
        seconds=time.perf_counter() - started,
        samples_per_second=timer.samples_per_second if timer is not None and status == "fits" else None,
        fit_started=fit_started,
        probe_batches=probe_batches,
    )
    return outcome, stage


@contextlib.contextmanager
def _cpu_rnn_kernels(model: torch.nn.Module, backend) -> Iterator[None]:
    """Run recurrent layers with PyTorch's own CPU kernels when the trial computes on the CPU.

    oneDNN's LSTM saves a workspace that its meta kernel does not allocate,
    so on oneDNN the emulated peak of an AWD_LSTM classifier is 28% above the
    simulated one. PyTorch's own kernels save the same tensors in both.
    NOTE: neither is what cuDNN saves on a GPU (its reserve space, and a
    weight buffer when the weights are not flattened, as with weight dropout).
    """
    if backend.name == "measured" or not any(isinstance(module, torch.nn.RNNBase) for module in model.modules()):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a note about Intel GPUs' TF32
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _fit_labels(spec: TrialSpec) -> tuple[str, ...]:
    if spec.fit == "fine_tune":
        return ("frozen fit", "unfrozen fit")
    if spec.later_stages:
        return tuple(
            f"stage {number} ({size}px, bs={batch})" for number, (size, batch) in enumerate(spec.stages, 1)
        )
    return ()


def _train_batches_needed(spec: TrialSpec) -> int:
    """Train batches an epoch needs, so that the optimizer steps twice."""
    # Gradient accumulation steps the optimizer once every grad_accumulation
    # batches, and fp16 loss scaling may skip a few steps.
    return max(spec.train_batches, 2 * spec.grad_accumulation) + _SPARE_TRAIN_BATCHES[spec.precision]


def _dataloaders(spec: TrialSpec, image_size: int, batch_size: int, backend):
    """Build synthetic DataLoaders for one fit, long enough for the trial's batches and steps."""
    train_batches = _train_batches_needed(spec)
    valid_batch_size = spec.valid_batch_size or batch_size
    point = dataclasses.replace(spec, image_size=image_size, batch_size=batch_size)
    dls = build_dataloaders(
        point,
        train_items=batch_size * train_batches,
        valid_items=valid_batch_size * max(spec.valid_batches, 1),
        device=backend.device,
    )
    if spec.valid_batch_size is not None:
        dls.valid.bs = spec.valid_batch_size  # fastai's val_bs
    return dls


def _run_fits(spec: TrialSpec, learn, backend, callbacks: list) -> None:
    """Run the fit the user runs: one fit_one_cycle, fine_tune's two fits, lr_find, or one fit per stage."""
    if spec.fit == "fine_tune":
        learn.fine_tune(1, freeze_epochs=1, cbs=callbacks)
    elif spec.fit == "lr_find":
        # lr_find saves and restores the weights under learn.path/models.
        with tempfile.TemporaryDirectory(prefix="planner-lr-find-") as folder:
            learn.path = Path(folder)
            learn.add_cbs(callbacks)
            try:
                learn.lr_find(show_plot=False, suggest_funcs=())
            finally:
                learn.remove_cbs(callbacks)
    else:
        for number, (size, batch) in enumerate(spec.stages):
            if number:
                learn.dls = _dataloaders(spec, size, batch, backend)
                backend.prepare_loaders(learn.dls)
            learn.fit_one_cycle(1, cbs=callbacks)


def run_trial(spec: TrialSpec, backend: MeasuredBackend | EmulatedBackend) -> TrialResult:
    """Run ``spec`` on the one card of a measured or emulated backend."""
    outcome, stage = fit_trial(spec, backend)
    allocated, reserved = backend.peaks()
    peak_stage = backend.peak_stage(stage.history)
    device_name = backend.device_name()
    backend.release()
    return TrialResult(
        status=outcome.status,
        backend=backend.name,
        oom_stage=outcome.progress.stage if outcome.status == "oom" else None,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        train_batches_run=outcome.train_batches_run,
        valid_batches_run=outcome.valid_batches_run,
        optimizer_steps=outcome.optimizer_steps,
        valid_batch_size=outcome.valid_batch_size,
        seconds=outcome.seconds,
        error=outcome.error,
        device_name=device_name,
        samples_per_second=outcome.samples_per_second,
        peak_stage=peak_stage,
        probe_batches=outcome.probe_batches,
    )


def run_simulated_trial(spec: TrialSpec, cards: list[Card]) -> list[TrialResult]:
    """Trace ``spec`` once on fake tensors and replay the trace on every card.

    A trial that cannot be simulated gives an ``error`` result on every card,
    with the reason; it is never replaced by another backend.
    """
    backend = SimulatedBackend()
    outcome, stage = fit_trial(spec, backend)
    backend.release()
    if outcome.status != "fits":
        reason = f"cannot be simulated: {outcome.error}" if outcome.fit_started else outcome.error
        return [
            TrialResult(status="error", backend=backend.name, seconds=outcome.seconds, error=reason) for _ in cards
        ]

    results = []
    for card in cards:
        started = time.perf_counter()
        played = replay(backend.events, stage.history, card)
        if played.fits:
            ended, needed, oom_stage = outcome.progress_at_end, None, None
        else:
            # Replay once more with room for everything: what the card would have needed.
            roomy = dataclasses.replace(card, memory_bytes=UNLIMITED_MEMORY_BYTES, overhead_bytes=0)
            needed = replay(backend.events, stage.history, roomy).peak_reserved_bytes
            ended, oom_stage = played.progress, played.progress.stage
        results.append(
            TrialResult(
                status="fits" if played.fits else "oom",
                backend=backend.name,
                oom_stage=oom_stage,
                peak_allocated_bytes=played.peak_allocated_bytes,
                peak_reserved_bytes=played.peak_reserved_bytes,
                train_batches_run=ended.train_batches,
                valid_batches_run=ended.valid_batches,
                optimizer_steps=ended.optimizer_steps,
                valid_batch_size=outcome.valid_batch_size,
                seconds=outcome.seconds / len(cards) + time.perf_counter() - started,
                error=played.message,
                needed_bytes=needed,
                peak_stage=played.peak_progress.stage if played.peak_progress else None,
                probe_batches=outcome.probe_batches,
            )
        )
    return results
