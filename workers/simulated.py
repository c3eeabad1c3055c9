"""The simulated backend: trace a trial with fake tensors, then replay it for every card.

Fake tensors carry shapes, dtypes and storage sizes but no data, so a
simulated trial computes nothing and takes about the same time at any batch
size. One trace, a list of allocation and free events, answers for every card:
each card replays it through a model of the CUDA caching allocator whose
capacity is the card's memory less its CUDA context.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Learner
from fastai.text.models.core import SentenceEncoder
from fastai.torch_core import TensorBase
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from planner.cards import Card
from workers.allocator import AllocatorOutOfMemory, CachingAllocatorModel
from workers.backends import FP16_INIT_SCALE, CPUMixedPrecision, allocate_workspaces
from workers.callbacks import Progress
from workers.text import full_batches_forward
from workers.tracker import ALLOC, StorageTracker

# Fake tensors run on the CPU, because autograd on fake CUDA tensors needs a CUDA context.
_FAKE_DEVICE = torch.device("cpu")


class SimulatedMixedPrecision(CPUMixedPrecision):
    """Mixed precision without loss scaling, which fake tensors cannot decide.

    ``GradScaler.step`` reads whether any gradient overflowed, a value fake
    tensors do not have. NOTE: the scaler's own tensors (scale, growth tracker,
    one found-inf flag per device) are a few 512-byte blocks, left out.
    """

    def before_fit(self) -> None:
        super().before_fit()
        self.learn.scaler = torch.amp.GradScaler("cpu", enabled=False)


class SimulatedBackend:
    """Run a trial on fake tensors and record its allocations for replay on each card.

    What changes from a real fit, and why it allocates the same:

    - The DataLoaders are built for the meta device, so ``build_learner``
      creates the model's parameters and buffers on meta, with shapes and no
      data. Before the fit they become fake CPU tensors of the same shapes,
      and ``model.to`` becomes a no-op, as the fakes already stand for device
      memory. The loaders then move batches to the CPU, where the fakes live.
    - Each loader yields fake batches with the shapes and dtypes that one
      real two-item batch has after fastai's batch transforms, at the
      loader's batch size, so no image is decoded.
    - fastai's ``TensorBase(x)`` casts return a fake tensor unchanged: a cast
      allocates nothing, and fake tensors cannot change their Python class.
    - A text classifier's encoder feeds every row of every chunk: fastai
      counts the rows that are not padding, a value fake tensors do not
      have, and synthetic documents have no padding.

    NOTE: fake tensors run on the CPU here (autograd on fake CUDA tensors
    needs a CUDA context), so mixed precision follows CPU autocast's operator
    lists, which differ slightly from CUDA's.
    """

    name = "simulated"

    def __init__(self) -> None:
        self.device = torch.device("meta")  # where the DataLoaders and the model are built
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.events: list[tuple[int, int, int, int]] = []
        self.tracker: StorageTracker | None = None

    def prepare(self, learn: Learner) -> None:
        _swap_in_fake_tensors(learn.model, self.fake_mode)
        model = learn.model
        model.to = lambda *args, **kwargs: model  # the fakes already stand for device memory
        for module in model.modules():
            if isinstance(module, SentenceEncoder):
                # fastai's encoder reads how many rows are padding; synthetic documents have none.
                module.forward = types.MethodType(full_batches_forward, module)
        self.prepare_loaders(learn.dls)

    def prepare_loaders(self, dls) -> None:
        """Make every loader yield fake batches, for the first fit or a later stage's DataLoaders."""
        dls.device = _FAKE_DEVICE
        for loader in dls.loaders:
            _yield_fake_batches(loader, self.fake_mode)

    def mixed_precision(self, precision: str) -> MixedPrecision:
        return SimulatedMixedPrecision(amp_mode=precision, init_scale=FP16_INIT_SCALE)

    @contextlib.contextmanager
    def tracking(self, learn: Learner, position: Callable[[], int] = lambda: 0) -> Iterator[None]:
        self.tracker = StorageTracker(events=self.events, position=position, only_fake=True)
        with _fastai_accepts_fake_tensors(), self.tracker:
            self.tracker.adopt(list(learn.model.parameters()) + list(learn.model.buffers()))
            yield

    def release(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


@dataclass(frozen=True)
class Replay:
    """The outcome of replaying a trace on one card."""

    fits: bool
    progress: Progress | None  # where the first failed allocation happened
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    message: str | None = None
    peak_progress: Progress | None = None  # where peak reserved memory was reached


def replay(events: list[tuple[int, int, int, int]], history: list[Progress], card: Card) -> Replay:
    """Replay a trace's allocations and frees on ``card``'s allocator, stopping at the first OOM."""
    allocator = CachingAllocatorModel(capacity_bytes=card.budget_bytes)
    handles: dict[int, int] = {}
    peak_position, peak_seen = 0, 0
    try:
        allocate_workspaces(allocator, card)
        for kind, storage_id, nbytes, position in events:
            if kind == ALLOC:
                try:
                    handles[storage_id] = allocator.malloc(nbytes)
                    if allocator.peak_reserved_bytes > peak_seen:
                        peak_position, peak_seen = position, allocator.peak_reserved_bytes
                except AllocatorOutOfMemory as error:
                    return Replay(
                        False,
                        history[position],
                        allocator.peak_allocated_bytes,
                        allocator.peak_reserved_bytes,
                        f"Simulated card {card.name!r} out of memory: {error}",
                    )
            elif storage_id in handles:
                allocator.free(handles.pop(storage_id))
    except AllocatorOutOfMemory as error:  # the workspaces alone do not fit
        return Replay(False, history[0], allocator.peak_allocated_bytes, allocator.peak_reserved_bytes, str(error))
    return Replay(
        True,
        None,
        allocator.peak_allocated_bytes,
        allocator.peak_reserved_bytes,
        peak_progress=history[peak_position],
    )


def _swap_in_fake_tensors(model: torch.nn.Module, fake_mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer with a fake CPU tensor of the same shape, keeping ties."""
    fakes: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None:
                    continue
                if id(tensor) not in fakes:
                    fakes[id(tensor)] = _fake_on_cpu(tensor, fake_mode)
                table[name] = fakes[id(tensor)]


def _fake_on_cpu(tensor: torch.Tensor, fake_mode: FakeTensorMode) -> torch.Tensor:
    """Return a fake CPU tensor with the shape, strides, dtype, storage and autograd flags of a CPU or meta tensor."""
    if tensor.device.type != "meta":
        return fake_mode.from_tensor(tensor)  # keeps nn.Parameter
    # A fake tensor wraps a meta tensor and reports another device, so the meta
    # tensor itself becomes the fake's data, and views of one storage still share it.
    fake = fake_mode.fake_tensor_converter.from_meta_and_device(fake_mode, tensor.detach(), _FAKE_DEVICE)
    if tensor.requires_grad:
        fake.requires_grad_(True)
    if isinstance(tensor, torch.nn.Parameter):
        fake._is_param = True  # as from_tensor sets it, so that isinstance(fake, nn.Parameter) is True
    return fake


def _yield_fake_batches(loader, fake_mode: FakeTensorMode) -> None:
    """Make ``loader`` yield fake batches shaped like its real ones after batch transforms."""
    largest = getattr(loader, "largest_batch", None)  # set by workers.largest_batches
    batch = largest.batch if largest is not None else loader.do_batch([loader.do_item(index) for index in range(2)])
    sample = loader.after_batch(batch)
    shapes = [(tuple(tensor.shape[1:]), tensor.dtype) for tensor in sample]
    batch_size = loader.bs
    count = len(loader)

    def create_batches(samples):
        for _ in range(count):
            with fake_mode:
                batch = tuple(torch.empty((batch_size, *shape), dtype=dtype) for shape, dtype in shapes)
            # Yield outside the mode: the fit's own code between batches runs on real tensors.
            yield batch

    loader.create_batches = create_batches
    loader.after_batch = lambda batch: batch


@contextlib.contextmanager
def _fastai_accepts_fake_tensors() -> Iterator[None]:
    descriptor = vars(TensorBase)["__new__"]
    original = TensorBase.__new__

    def new(cls, x, **kwargs):
        if isinstance(x, FakeTensor):
            return x
        return original(cls, x, **kwargs)

    TensorBase.__new__ = staticmethod(new)
    try:
        yield
    finally:
        TensorBase.__new__ = descriptor
