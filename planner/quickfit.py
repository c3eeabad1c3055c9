"""A notebook switch that makes every fastai fit in the process stop after a few batches.

``quickfit(True)`` is for tuning in a notebook. While it is on, every
``fit``, ``fit_one_cycle``, ``fine_tune``, ``lr_find``, ``validate`` and
``get_preds`` runs only its first batches, on Learners created before the
switch as well as after. Each call logs one line with the batches run and the
peak CUDA memory of the call. ``quickfit(False)`` puts fastai back as it was.

Mechanism: while on, the switch replaces four methods on the fastai
``Learner`` class (``fit``, ``validate``, ``get_preds`` and ``lr_find``) with
wrappers, and off, it puts the original functions back. Every other entry
point goes through one of these four: ``fit_one_cycle`` and ``fine_tune``
call ``fit``, and ``predict`` and ``show_results`` call ``get_preds``. Each
wrapper adds a ``QuickFitCallback`` to the Learner for the length of the call,
through fastai's own ``Learner.added_cbs``. The ``fit`` wrapper also passes
``n_epoch=1`` (``start_epoch + 1`` when the call skips epochs), so a fit runs
one epoch and ends the normal way.

``fastai.callback.core.defaults.callbacks`` is never changed. A callback added
there reaches only Learners created later, so the class methods would need
replacing anyway. It would also stay in every Learner created while the switch
was on, and ``Learner.export`` would pickle it, so ``load_learner`` would need
this package.

The callback limits batches the way fastai's ``DistributedTrainer`` shards
them. In ``before_train`` and ``before_validate`` it replaces ``learn.dl``
with a view of its first N batches, so each phase ends normally. That keeps
Recorder's epoch record complete: a phase stopped by ``CancelTrainException``
or ``CancelValidException`` leaves its losses and metrics out of
``recorder.values``, which breaks ``validate()``'s return value and
``SaveModelCallback`` and ``EarlyStoppingCallback``.

The environment variable ``PLANNER_QUICKFIT`` takes effect only when
``quickfit.from_environment()`` is called, never on import. The package
exports ``quickfit``, so an import-time check would change fastai in every
process that imports ``planner``, including the planner's own trial workers.

This module imports fastai and torch only when the switch is first turned
on, so that ``import planner`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from planner.cards import format_bytes

logger = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "PLANNER_QUICKFIT"

# Learner methods that the switch replaces while it is on.
PATCHED_METHODS = ("fit", "validate", "get_preds", "lr_find")

_ON_VALUES = ("1", "true", "on", "yes")
_OFF_VALUES = ("", "0", "false", "off", "no")
_ENVIRONMENT_KEYS = {"train": "train_batches", "valid": "valid_batches"}


@dataclass(frozen=True)
class QuickFitSettings:
    """Batch limits of the switch and where its report lines go besides the log."""

    train_batches: int = 2
    valid_batches: int = 1
    report: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        for name in ("train_batches", "valid_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.report is not None and not callable(self.report):
            raise TypeError(f"report must be callable, for example print, got {self.report!r}")


# Switch state for the process: the active settings (None while off) and the
# functions that were on the Learner class before the switch replaced them.
_settings: QuickFitSettings | None = None
_originals: dict[str, Callable[..., Any]] = {}
_wrappers: dict[str, Callable[..., Any]] = {}


class QuickFitSwitch:
    """The ``quickfit`` switch: call it with True or False, or read the environment.

    A callable object rather than a function, so that ``planner.quickfit``
    offers ``from_environment`` and ``settings`` also where the package
    exports this object under the module's own name.
    """

    def __call__(
        self,
        enabled: bool = True,
        *,
        train_batches: int = 2,
        valid_batches: int = 1,
        report: Callable[[str], None] | None = None,
    ) -> QuickFitSettings | None:
        """Turn the switch on or off, and return the active settings (None when off).

        On, each later ``fit`` runs ``train_batches`` train batches and
        ``valid_batches`` validation batches of its first epoch and then ends,
        ``validate`` and ``get_preds`` run ``valid_batches`` batches, and
        ``lr_find`` runs ``train_batches`` train batches. Each call logs one
        line to the ``planner.quickfit`` logger and passes it to ``report``
        (``report=print`` shows it in a notebook). Calling it again while on
        only replaces the settings. Off restores fastai's Learner methods.
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {type(enabled).__name__} {enabled!r}")
        if not enabled:
            _disable()
            return None
        settings = QuickFitSettings(train_batches, valid_batches, report)
        _enable(settings)
        return settings

    def from_environment(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        report: Callable[[str], None] | None = None,
    ) -> QuickFitSettings | None:
        """Set the switch from ``PLANNER_QUICKFIT`` and return the active settings (None when off).

        The variable decides both ways: unset, empty, ``0``, ``false``,
        ``off`` or ``no`` turn the switch off. ``1``, ``true``, ``on`` or
        ``yes`` turn it on with 2 train and 1 validation batch, and
        ``train=N,valid=M`` (either key may be left out) sets the counts.
        ``environ`` defaults to ``os.environ``. Raises ``ValueError`` on any
        other value.
        """
        environ = os.environ if environ is None else environ
        counts = parse_environment_value(environ.get(ENVIRONMENT_VARIABLE, ""))
        if counts is None:
            return self(False)
        return self(True, report=report, **counts)

    @property
    def settings(self) -> QuickFitSettings | None:
        """The active settings, or None while the switch is off."""
        return _settings

    def __repr__(self) -> str:
        return f"<quickfit switch: {'off' if _settings is None else _settings}>"


quickfit = QuickFitSwitch()
from_environment = quickfit.from_environment


def parse_environment_value(value: str) -> dict[str, int] | None:
    """Parse a ``PLANNER_QUICKFIT`` value into batch counts, or None when it means off.

    Returns keyword arguments for ``quickfit`` (empty for the defaults).
    """
    text = value.strip().lower()
    if text in _OFF_VALUES:
        return None
    if text in _ON_VALUES:
        return {}
    counts: dict[str, int] = {}
    for part in text.split(","):
        key, separator, number = (piece.strip() for piece in part.partition("="))
        if not separator or key not in _ENVIRONMENT_KEYS:
            raise ValueError(_environment_error(value, f"{part.strip()!r} is not train=N or valid=N"))
        if _ENVIRONMENT_KEYS[key] in counts:
            raise ValueError(_environment_error(value, f"{key} is given twice"))
        if not number.isdigit() or int(number) < 1:
            raise ValueError(_environment_error(value, f"{key} must be a positive integer, got {number!r}"))
        counts[_ENVIRONMENT_KEYS[key]] = int(number)
    return counts


def _environment_error(value: str, problem: str) -> str:
    return (
        f"invalid {ENVIRONMENT_VARIABLE}={value!r}: {problem}. "
        f"Use 1 or 0, or train=N,valid=M with positive batch counts, for example train=2,valid=1"
    )


def _enable(settings: QuickFitSettings) -> None:
    global _settings

    # Both imports patch Learner (lr_find, fit_one_cycle and fine_tune come
    # from fastai.callback.schedule), so they must run before the originals
    # are read off the class.
    import fastai.callback.schedule  # noqa: F401
    from fastai.learner import Learner

    if not _originals:
        for name in PATCHED_METHODS:
            original = Learner.__dict__[name]
            wrapper = _wrap_lr_find(original) if name == "lr_find" else _wrap_call(name, original)
            _originals[name] = original
            _wrappers[name] = wrapper
            setattr(Learner, name, wrapper)
    _settings = settings
    logger.info(
        "quickfit on: fits stop after %d train and %d validation batches",
        settings.train_batches,
        settings.valid_batches,
    )


def _disable() -> None:
    global _settings

    _settings = None
    if not _originals:
        return
    from fastai.learner import Learner

    for name, original in _originals.items():
        if Learner.__dict__.get(name) is _wrappers[name]:
            setattr(Learner, name, original)
        else:
            # Something replaced the wrapper after the switch did, and putting
            # the original back would undo that. The wrapper, if still called
            # through it, only passes calls on while the switch is off.
            logger.warning(
                "quickfit off: Learner.%s was replaced after quickfit patched it, so it is left as it is",
                name,
            )
    _originals.clear()
    _wrappers.clear()
    logger.info("quickfit off: fastai's Learner methods are restored")


def _wrap_call(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fit``, ``validate`` or ``get_preds`` so that each call runs only its first batches."""

    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(learn: Any, *args: Any, **kwargs: Any) -> Any:
        settings = _settings
        if settings is None:  # a bound method kept from while the switch was on
            return original(learn, *args, **kwargs)
        if name == "fit":
            args, kwargs = _limit_epochs(signature, learn, args, kwargs)
        if name == "get_preds":
            args, kwargs = _limit_prediction_loader(learn, args, kwargs, settings.valid_batches)
        if _has_active_callback(learn):
            # A call inside another stopped call (fit inside lr_find, or a
            # callback's get_preds during a fit): the outer callback limits it.
            return original(learn, *args, **kwargs)
        return _run_stopped(learn, name, settings, lambda: original(learn, *args, **kwargs))

    return wrapper


def _wrap_lr_find(original: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``lr_find`` so that it trains ``train_batches`` batches and returns NaN suggestions.

    fastai's suggestion functions drop the first ``num_it // 10`` and the
    last 5 recorded points, so a few batches leave none, and fastai 2.8
    raises IndexError there. The wrapper runs ``lr_find`` without
    suggestions or plot, then returns fastai's ``SuggestedLRs`` tuple with a
    NaN per requested suggestion. Later cells that pass it on still run,
    and NaN cannot pass for a measured learning rate.
    """
    signature = inspect.signature(original)

    @functools.wraps(original)
    def wrapper(learn: Any, *args: Any, **kwargs: Any) -> Any:
        settings = _settings
        if settings is None or _has_active_callback(learn):
            return original(learn, *args, **kwargs)
        bound = signature.bind(learn, *args, **kwargs)
        bound.apply_defaults()
        suggest_funcs = bound.arguments["suggest_funcs"]
        bound.arguments["suggest_funcs"] = None
        bound.arguments["show_plot"] = False
        note = None if suggest_funcs is None else "suggestions are NaN because too few batches ran"
        _run_stopped(learn, "lr_find", settings, lambda: original(*bound.args, **bound.kwargs), note=note)
        return None if suggest_funcs is None else _nan_suggestions(suggest_funcs)

    return wrapper


def _limit_epochs(
    signature: inspect.Signature, learn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return ``fit`` arguments with ``n_epoch`` cut to ``start_epoch + 1``, the first epoch that trains.

    Passing a smaller ``n_epoch`` ends the fit the normal way, so every
    callback gets ``after_epoch`` for each epoch it began, which a
    ``CancelFitException`` at the start of the second epoch would not allow. Schedules that ``fit_one_cycle`` and
    ``fine_tune`` set up then run their whole cycle within that epoch.
    """
    bound = signature.bind(learn, *args, **kwargs)
    start_epoch = bound.arguments.get("start_epoch", 0)
    bound.arguments["n_epoch"] = min(bound.arguments["n_epoch"], start_epoch + 1)
    return bound.args[1:], bound.kwargs


def _nan_suggestions(suggest_funcs: Any) -> tuple[float, ...]:
    # Named as fastai's lr_find names them: by function name, also through a partial.
    funcs = suggest_funcs if isinstance(suggest_funcs, (list, tuple)) else (suggest_funcs,)
    names = [func.func.__name__ if isinstance(func, functools.partial) else func.__name__ for func in funcs]
    suggested_lrs = namedtuple("SuggestedLRs", names)  # type: ignore[misc]
    return suggested_lrs(*[float("nan")] * len(names))


def _run_stopped(
    learn: Any,
    name: str,
    settings: QuickFitSettings,
    call: Callable[[], Any],
    *,
    note: str | None = None,
) -> Any:
    """Run ``call`` with a ``QuickFitCallback`` on ``learn`` and report its batches and peak memory.

    Exceptions, an out-of-memory error included, propagate unchanged after
    the report line.
    """
    callback = _callback_class()(settings.train_batches, settings.valid_batches)
    memory = _PeakMemory.start(learn)
    try:
        with learn.added_cbs(callback):
            result = call()
    except BaseException as error:
        line = _report_line(name, callback, memory, f"raised {type(error).__name__} after")
        try:
            _report(settings, line)
        except Exception:
            logger.exception(
                "quickfit: the report callable failed while reporting a %s error, which is re-raised", name
            )
        raise
    _report(settings, _report_line(name, callback, memory, "ran", note))
    return result


def _report(settings: QuickFitSettings, line: str) -> None:
    logger.info("%s", line)
    if settings.report is not None:
        settings.report(line)


def _report_line(name: str, callback: Any, memory: _PeakMemory, outcome: str, note: str | None = None) -> str:
    train = _count(callback.train_done, "train batch", "train batches")
    valid = _count(callback.valid_done, "validation batch", "validation batches")
    line = f"quickfit: {name} {outcome} {train} and {valid}; {memory.describe()}"
    return f"{line}; {note}" if note else line


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _has_active_callback(learn: Any) -> bool:
    callback_class = _callback_class()
    return any(isinstance(callback, callback_class) for callback in learn.cbs)


def _limit_prediction_loader(
    learn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], batches: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Give ``get_preds`` a DataLoader of its first ``batches`` batches, as its ``dl`` argument.

    ``get_preds`` reads the item order from ``dl.get_idxs()`` before any
    callback runs, and with ``reorder=True`` it indexes the predictions by
    that whole order, so stopping the loop later would raise IndexError.
    A fastai DataLoader is replaced by a copy whose ``get_idxs`` returns only
    the first items. Other loaders (a list of batches, a PyTorch DataLoader)
    have no ``get_idxs``, and the callback alone limits them.
    """
    from fastai.data.load import DataLoader

    ds_idx = args[0] if args else kwargs.get("ds_idx", 1)
    dl = args[1] if len(args) > 1 else kwargs.get("dl")
    if dl is None:
        dl = learn.dls[ds_idx].new(shuffle=False, drop_last=False)  # as get_preds builds it
    if not isinstance(dl, DataLoader):
        return args, kwargs

    items = batches * dl.bs if dl.bs else batches  # bs None means the dataset yields whole batches
    first_indices = list(itertools.islice(dl.get_idxs(), items))
    limited = dl.new(get_idxs=_FixedIndices(first_indices), shuffle=False, drop_last=False)
    if len(args) > 1:
        return (args[0], limited, *args[2:]), kwargs
    return args, {**kwargs, "dl": limited}


class _FixedIndices:
    """A ``get_idxs`` replacement that returns the same item indices on every call."""

    def __init__(self, indices: list[Any]) -> None:
        self.indices = indices

    def __call__(self) -> list[Any]:
        return list(self.indices)


class _FirstBatches:
    """A view of a DataLoader that yields only its first ``limit`` batches.

    Every other attribute is the wrapped loader's, so callbacks that read
    ``learn.dl`` (``to_detach``, ``decode_batch``, ``dataset``) still work.
    """

    def __init__(self, loader: Any, limit: int) -> None:
        self.loader = loader
        self.limit = limit

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.loader, self.limit)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet, as while unpickling: avoid endless recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


@functools.cache
def _callback_class() -> type:
    """Define ``QuickFitCallback`` on first use, so that importing this module does not import fastai."""
    from fastai.callback.core import Callback

    class QuickFitCallback(Callback):
        """Limit each train and validation phase to its first batches.

        ``train_done`` and ``valid_done`` count the batches that reached
        ``after_batch`` during the call, for the report line.
        """

        # After the callbacks that wrap learn.dl or set up the model and the
        # batch (MixedPrecision 10, DistributedTrainer 11), before Recorder
        # (50) and the progress bar and schedulers (60), which then see the
        # shortened DataLoader. It also counts a batch before LRFinder (60)
        # raises CancelFitException in the same after_batch.
        order = 40

        def __init__(self, train_limit: int, valid_limit: int) -> None:
            super().__init__()
            self.train_limit = train_limit
            self.valid_limit = valid_limit
            self.train_done = 0
            self.valid_done = 0

        def before_train(self) -> None:
            self.learn.dl = _FirstBatches(self.learn.dl, self.train_limit)

        def before_validate(self) -> None:
            self.learn.dl = _FirstBatches(self.learn.dl, self.valid_limit)

        def after_batch(self) -> None:
            if self.learn.training:
                self.train_done += 1
            else:
                self.valid_done += 1

        def after_train(self) -> None:
            self._restore_loader()

        def after_validate(self) -> None:
            self._restore_loader()

        def _restore_loader(self) -> None:
            if isinstance(self.learn.dl, _FirstBatches):
                self.learn.dl = self.learn.dl.loader

    return QuickFitCallback


@dataclass(frozen=True)
class _PeakMemory:
    """Peak CUDA memory of one call, measured from a reset at its start.

    On other devices nothing is measured. The process's peak resident set
    size (``resource.getrusage``) would be the only CPU figure, and it cannot
    be reset, so it would not be the peak of the call.

    NOTE: the CUDA branch is covered only by a test marked ``gpu``, which
    has not yet run on a GPU.
    """

    device: Any  # torch.device of the Learner, or None when it has no parameters

    @classmethod
    def start(cls, learn: Any) -> _PeakMemory:
        import torch

        device = _learner_device(learn)
        if device is not None and device.type == "cuda":
            # Resets the process-wide peak of this device, which
            # torch.cuda.max_memory_allocated reports to any caller.
            torch.cuda.reset_peak_memory_stats(device)
        return cls(device)

    def describe(self) -> str:
        import torch

        if self.device is None or self.device.type != "cuda":
            where = "this Learner" if self.device is None else str(self.device)
            return f"peak memory not measured on {where}: only CUDA devices report it"
        allocated = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        return (
            f"peak allocated {format_bytes(allocated)}, peak reserved {format_bytes(reserved)} "
            f"on {self.device}"
        )


def _learner_device(learn: Any) -> Any:
    """Return the device the fit runs on: the DataLoaders' device, as fastai moves the model there."""
    import torch

    device = getattr(learn.dls, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(learn.model.parameters()).device
    except (StopIteration, AttributeError):
        return None
