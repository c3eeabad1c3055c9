"""Memory backends: where a trial's tensors live and how its peak memory is read.

- ``MeasuredBackend`` runs on a CUDA GPU and reads PyTorch's allocator statistics.
- ``EmulatedBackend`` computes on the CPU while ``StorageTracker`` counts live
  storage and raises ``torch.OutOfMemoryError`` at the card's budget.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from fastai.callback.fp16 import MixedPrecision
from fastcore.foundation import L
from fastai.learner import Learner
from torch.utils._pytree import tree_map_only

from planner.cards import Card
from workers.allocator import CachingAllocatorModel
from workers.tracker import StorageTracker

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# fp16 loss scaling skips every step whose gradients overflow and halves the
# scale. From GradScaler's default of 2**16, a freshly initialised network
# overflows for up to ten steps; starting at 2**10 the optimizer steps after a
# few batches. The scale changes no tensor's size, so memory is the same.
FP16_INIT_SCALE = 2.0**10


class MeasuredBackend:
    """Run on this process's current CUDA GPU and read its allocator statistics."""

    name = "measured"

    def __init__(self, card: Card) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("the measured backend needs a CUDA GPU, and torch.cuda.is_available() is False")
        self.card = card
        self.device = torch.device("cuda", torch.cuda.current_device())

    def prepare(self, learn: Learner) -> None:
        # Start from an empty cache, so peak reserved is this trial's alone.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def prepare_loaders(self, dls) -> None:
        """Nothing to do: fastai moves each batch to the GPU itself."""

    def peak_stage(self, history) -> str | None:
        # NOTE: the CUDA allocator keeps no timeline of its peak, so a measured
        # trial does not say in which stage its peak happened.
        return None

    def mixed_precision(self, precision: str) -> MixedPrecision:
        return MixedPrecision(amp_mode=precision, init_scale=FP16_INIT_SCALE)

    @contextlib.contextmanager
    def tracking(self, learn: Learner, position: Callable[[], int] = lambda: 0) -> Iterator[None]:
        yield

    def peaks(self) -> tuple[int | None, int | None]:
        return (
            torch.cuda.max_memory_allocated(self.device),
            torch.cuda.max_memory_reserved(self.device),
        )

    def release(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device)


class CPUMixedPrecision(MixedPrecision):
    """fastai's mixed precision with CPU autocast and a CPU gradient scaler.

    fastai 2.8 hard-codes ``autocast('cuda')``, which PyTorch disables on a
    machine without CUDA, so an emulated fp16 trial would silently run in fp32.
    NOTE: CPU and CUDA autocast cast slightly different operator lists to low
    precision, so emulated mixed-precision peaks can differ from measured ones.
    """

    def before_fit(self) -> None:
        dtype = _DTYPES[self.amp_mode.value]
        # bfloat16 has fp32's range, so it needs no loss scaling.
        self.kwargs["enabled"] = dtype == torch.float16
        self.autocast = torch.autocast("cpu", dtype=dtype)
        self.learn.scaler = torch.amp.GradScaler("cpu", **self.kwargs)
        self.scales = L()
        self.recurrent = [module for module in self.learn.model.modules() if isinstance(module, torch.nn.RNNBase)]
        for module in self.recurrent:
            module.forward = functools.partial(_recurrent_forward_cast_once, module, dtype)

    def after_fit(self) -> None:
        super().after_fit()
        for module in self.recurrent:
            del module.forward  # the class's forward again


def _recurrent_forward_cast_once(module: torch.nn.RNNBase, dtype: torch.dtype, input, hx=None):
    """Run a recurrent layer under CPU autocast as CUDA autocast runs it: weights cast once per call.

    CUDA autocast casts and flattens an RNN's weights into one low-precision
    buffer per call (``_cudnn_rnn_cast_reflatten``). CPU autocast instead casts
    the weights inside every time step's matrix products and keeps each copy
    for the backward pass, which made a mixed-precision AWD_LSTM language
    model's peak four times its fp32 peak.
    """
    if not torch.is_autocast_enabled("cpu"):
        return type(module).forward(module, input, hx)
    module._update_flat_weights()  # picks up weights set since the last call (fastai's weight dropout)
    flat = module._flat_weights
    with torch.autocast("cpu", enabled=False):
        module._flat_weights = [weight.to(dtype) if weight is not None else None for weight in flat]
        module._update_flat_weights = lambda: None  # keep the cast copies for this call
        try:
            state = tree_map_only(torch.Tensor, lambda tensor: tensor.to(dtype), hx)
            return type(module).forward(module, input.to(dtype), state)
        finally:
            del module._update_flat_weights
            module._flat_weights = flat


class EmulatedBackend:
    """Compute on the CPU and enforce the card's memory with a model of the caching allocator.

    Every storage an operator creates is replayed as a malloc in
    ``CachingAllocatorModel``, whose capacity is the card's memory less its
    CUDA context, so a trial runs out of memory where the card's reserved
    memory would. Host-side work is not counted: the data loader builds each
    batch with the tracker paused, and the batch is then copied under
    tracking, as fastai's transfer to the GPU would. Model parameters and
    buffers are counted when the fit starts, as ``model.to(device)``
    allocates them on a GPU.
    """

    name = "emulated"

    def __init__(self, card: Card) -> None:
        self.card = card
        self.device = torch.device("cpu")
        self.allocator = CachingAllocatorModel(capacity_bytes=card.budget_bytes)
        self.tracker = StorageTracker(allocator=self.allocator, card_name=card.name)

    def prepare(self, learn: Learner) -> None:
        self.prepare_loaders(learn.dls)

    def prepare_loaders(self, dls) -> None:
        """Copy each batch under tracking, as the transfer to a GPU would allocate it."""
        for loader in dls.loaders:
            _copy_batches_under_tracking(loader, self.tracker)

    def peak_stage(self, history) -> str | None:
        position = self.tracker.peak_position
        return history[position].stage if position is not None else None

    def mixed_precision(self, precision: str) -> MixedPrecision:
        return CPUMixedPrecision(amp_mode=precision, init_scale=FP16_INIT_SCALE)

    @contextlib.contextmanager
    def tracking(self, learn: Learner, position: Callable[[], int] = lambda: 0) -> Iterator[None]:
        self.tracker.position = position
        with self.tracker:
            allocate_workspaces(self.allocator, self.card)
            self.tracker.adopt(list(learn.model.parameters()) + list(learn.model.buffers()))
            yield

    def peaks(self) -> tuple[int | None, int | None]:
        return self.allocator.peak_allocated_bytes, self.allocator.peak_reserved_bytes

    def release(self) -> None:
        self.tracker.close()

    def device_name(self) -> str | None:
        return None


# A training step uses cuBLAS on two threads, the forward on the caller's and
# the backward on autograd's device thread, and each thread has its own handle.
# NOTE: an estimate: fp32-only convolutional nets may never call cuBLAS on one
# of them, which makes this an overestimate of up to two workspaces.
CUBLAS_HANDLES_PER_TRIAL = 2


def allocate_workspaces(allocator: CachingAllocatorModel, card: Card) -> None:
    """Allocate the cuBLAS workspaces a GPU trial takes from the caching allocator."""
    if card.workspace_bytes:
        for _ in range(CUBLAS_HANDLES_PER_TRIAL):
            allocator.malloc(card.workspace_bytes)


def _copy_batches_under_tracking(loader: Any, tracker: StorageTracker) -> None:
    """Build batches with the tracker paused, then copy them as a transfer to the card would."""
    build_batches = loader.create_batches

    def create_batches(samples):
        batches = build_batches(samples)
        while True:
            with tracker.paused():
                batch = next(batches, None)
            if batch is None:
                return
            yield tree_map_only(torch.Tensor, torch.Tensor.clone, batch)

    loader.create_batches = create_batches


