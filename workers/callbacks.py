"""fastai callbacks that stop a fit after a few batches and name the stage it is in."""

from __future__ import annotations

import time
from typing import NamedTuple

from fastai.callback.core import (
    Callback,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
)

SETUP = "setup"
TRAIN_FORWARD = "train forward"
BACKWARD = "backward"
OPTIMIZER_STEP = "optimizer step"
VALIDATION = "validation"


class Progress(NamedTuple):
    """A fit's position: its stage and the batches and optimizer steps completed so far."""

    stage: str
    train_batches: int
    valid_batches: int
    optimizer_steps: int


class StageCallback(Callback):
    """Keep ``current_stage`` up to date, so that an OOM can say where it happened.

    Runs before every other callback (fastai sorts callbacks by ``order`` for
    each event), so a mixed-precision callback's work in ``before_step`` counts
    as the optimizer step. ``history`` holds a ``Progress`` per stage change,
    and ``position`` indexes its last entry, so that a simulated trial's
    allocation events can later be mapped back to stage and batch counts.
    """

    order = -50

    def __init__(self, *, fit_labels: tuple[str, ...] = ()) -> None:
        self.train_done = self.valid_done = self.steps_done = 0
        self.step_cancelled = False
        # Names of the fits of a multi-fit trial, in order ("frozen fit", ...),
        # prefixed to each stage so that an OOM names the fit it happened in.
        self.fit_labels = fit_labels
        self.fits_started = 0
        self.history: list[Progress] = []
        self._enter(SETUP)

    @property
    def current_stage(self) -> str:
        return self.history[-1].stage

    @property
    def position(self) -> int:
        return len(self.history) - 1

    @property
    def fit_label(self) -> str | None:
        """The name of the fit running now, in a multi-fit trial."""
        if not self.fit_labels or self.fits_started == 0:
            return None
        return self.fit_labels[min(self.fits_started, len(self.fit_labels)) - 1]

    def _enter(self, stage: str) -> None:
        label = self.fit_label
        named = f"{label}: {stage}" if label else stage
        self.history.append(Progress(named, self.train_done, self.valid_done, self.steps_done))

    def before_fit(self) -> None:
        self.fits_started += 1
        self._enter(SETUP)  # moving the model to the device happens here

    def before_train(self) -> None:
        self._enter(TRAIN_FORWARD)

    def before_batch(self) -> None:
        self._enter(TRAIN_FORWARD if self.learn.training else VALIDATION)

    def after_loss(self) -> None:
        if self.learn.training:
            self._enter(BACKWARD)

    def before_step(self) -> None:
        self.step_cancelled = False
        self._enter(OPTIMIZER_STEP)

    def after_cancel_step(self) -> None:
        self.step_cancelled = True

    def after_step(self) -> None:
        # fastai calls after_step also when a callback cancelled the step
        # (fp16 loss scaling skips steps whose gradients overflowed).
        if not self.step_cancelled:
            self.steps_done += 1
        self._enter(TRAIN_FORWARD)

    def after_batch(self) -> None:
        if self.learn.training:
            self.train_done += 1
        else:
            self.valid_done += 1

    def before_validate(self) -> None:
        self._enter(VALIDATION)


class StopAfterNBatches(Callback):
    """Stop training after ``train_batches`` batches and validation after ``valid_batches``.

    Training goes on past ``train_batches`` until the optimizer has stepped
    ``min_steps`` times: Adam-style optimizers allocate their state on the
    first step, and fp16 loss scaling or gradient accumulation skip steps.
    Each fit ends after its first epoch's validation. In a multi-fit trial
    (``fine_tune``, progressive resizing) the limits apply to every fit and
    the counts are summed.
    """

    order = 95  # after Recorder and progress callbacks have seen the batch

    def __init__(self, train_batches: int, valid_batches: int, *, min_steps: int = 2) -> None:
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.min_steps = min_steps
        self.train_batches_run = 0
        self.valid_batches_run = 0
        self.optimizer_steps = 0
        self.step_cancelled = False
        self._train_in_fit = self._valid_in_fit = self._steps_in_fit = 0
        self.steps_per_fit: list[int] = []

    def before_fit(self) -> None:
        # Counts are per fit for stopping, and summed over fits for the result.
        self._train_in_fit = 0
        self._valid_in_fit = 0
        self._steps_in_fit = 0

    def before_step(self) -> None:
        self.step_cancelled = False

    def after_cancel_step(self) -> None:
        self.step_cancelled = True

    def after_step(self) -> None:
        # fastai calls after_step also when a callback cancelled the step.
        if not self.step_cancelled:
            self.optimizer_steps += 1
            self._steps_in_fit += 1

    def after_batch(self) -> None:
        if self.learn.training:
            self.train_batches_run += 1
            self._train_in_fit += 1
            if self._train_in_fit >= self.train_batches and self._steps_in_fit >= self.min_steps:
                raise CancelTrainException()
        else:
            self.valid_batches_run += 1
            self._valid_in_fit += 1
            if self._valid_in_fit >= self.valid_batches:
                raise CancelValidException()

    def before_validate(self) -> None:
        if self.valid_batches == 0:
            raise CancelValidException()

    def after_epoch(self) -> None:
        raise CancelFitException()

    def after_fit(self) -> None:
        self.steps_per_fit.append(self._steps_in_fit)


class ThroughputCallback(Callback):
    """Time train batches after the first, for samples per second on a real device.

    The first batch is left out: it pays for cuDNN's algorithm search and lazy
    initialisation. On CUDA each timestamp waits for the device to finish.
    """

    order = 94  # after the optimizer step, before StopAfterNBatches ends training in after_batch

    def __init__(self, *, synchronize: bool = False) -> None:
        self.synchronize = synchronize
        self.batch_ends: list[float] = []
        self.samples: list[int] = []

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        if self.synchronize:
            import torch

            torch.cuda.synchronize()
        self.batch_ends.append(time.perf_counter())
        self.samples.append(len(self.learn.xb[0]))

    @property
    def samples_per_second(self) -> float | None:
        """Samples per second over the train batches after the first, None with fewer than two."""
        if len(self.batch_ends) < 2:
            return None
        return sum(self.samples[1:]) / (self.batch_ends[-1] - self.batch_ends[0])
