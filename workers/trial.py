"""Run one trial: build the Learner, fit it for a few batches, and report its memory."""

from __future__ import annotations

import gc
import logging
import time

import torch
from fastai.callback.progress import ProgressCallback

from planner.grid import TrialSpec
from workers.backends import Backend
from workers.callbacks import StageCallback, StopAfterNBatches
from workers.learners import build_dataloaders, build_learner
from workers.oom import is_out_of_memory
from workers.results import TrialResult

logger = logging.getLogger(__name__)

# Extra train batches in the synthetic dataset beyond the configured count, so
# that fp16 loss scaling can skip a few overflowing steps and the optimizer
# still steps twice.
_SPARE_TRAIN_BATCHES = {"fp32": 1, "bf16": 1, "fp16": 8}


def run_trial(spec: TrialSpec, backend: Backend) -> TrialResult:
    """Fit ``spec`` on ``backend`` for a few batches and return what it measured.

    An out-of-memory error is a result (status "oom"); any other exception is
    recorded with its type and message (status "error"). Either way, nothing
    the trial allocated is referenced once this function returns.
    """
    started = time.perf_counter()
    torch.manual_seed(0)
    stage = StageCallback()
    stop = StopAfterNBatches(spec.train_batches, spec.valid_batches)
    status, oom_stage, message = "fits", None, None
    valid_batch_size = None
    learn = None
    try:
        spare = _SPARE_TRAIN_BATCHES[spec.precision]
        dls = build_dataloaders(
            spec,
            train_items=spec.batch_size * (spec.train_batches + spare),
            valid_items=spec.batch_size * max(spec.valid_batches, 1),
            device=backend.device,
        )
        valid_batch_size = dls.valid.bs
        learn = build_learner(spec, dls)
        del dls
        if spec.precision != "fp32":
            learn.add_cb(backend.mixed_precision(spec.precision))
        learn.remove_cb(ProgressCallback)
        backend.prepare(learn)
        with backend.tracking(learn):
            learn.fit_one_cycle(1, cbs=[stage, stop])
        if stop.optimizer_steps < 2:
            status = "error"
            message = (
                f"the optimizer stepped {stop.optimizer_steps} times in "
                f"{stop.train_batches_run} train batches, fewer than the 2 needed to allocate its state"
            )
    except Exception as error:  # classified below; the trial's result carries it
        message = f"{type(error).__name__}: {error}"
        if is_out_of_memory(error):
            status, oom_stage = "oom", stage.current_stage
        else:
            status = "error"
            logger.debug("trial %s failed", spec, exc_info=True)
    finally:
        # Drop every reference to the trial's tensors before reading the
        # cache state: fastai's Learner and its callbacks form reference cycles.
        learn = None
        stage.learn = stop.learn = None
        gc.collect()

    allocated, reserved = backend.peaks()
    device_name = backend.device_name()
    backend.release()
    return TrialResult(
        status=status,
        backend=backend.name,
        oom_stage=oom_stage,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        train_batches_run=stop.train_batches_run,
        valid_batches_run=stop.valid_batches_run,
        optimizer_steps=stop.optimizer_steps,
        valid_batch_size=valid_batch_size,
        seconds=time.perf_counter() - started,
        error=message,
        device_name=device_name,
    )
