"""Cluster sizing: which card, how many GPUs, and what per-GPU batch and gradient accumulation reach a global batch size.

The grid's top-level ``sizing`` section names targets: a model entry, the
global batch size of its training recipe and, for time and cost, the dataset
size, the epochs and a price per card-hour::

    sizing:
      targets:
        - {model: 0, global_batch_size: 1024, dataset_size: 1281167, epochs: 90}
        - {model: 1, arch: resnet50, precision: fp16, global_batch_size: 256}
      prices: {T4: 0.35, A100-40GB: 1.10}      # per card-hour, in any currency
      utilization: 40%                          # of peak, for throughput estimates
      peak_tflops: {my-gpu: {fp32: 20, fp16: 160}}  # dense TFLOPS, adds or overrides a card's peaks

``size_cluster`` computes, per card and target row, from the plan's tables:
the largest per-GPU batch that fits with the headroom, on one GPU and under
DistributedDataParallel (DDP), how many GPUs reach the global batch without
gradient accumulation, and the accumulation steps on 1, 2, 4 and 8 GPUs.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from planner.cards import format_bytes
from planner.grid import PRECISIONS, Headroom
from planner.tasks import LEARNER_TASK, TASKS, VISION_TASKS
from planner.throughput import (
    DEFAULT_UTILIZATION,
    PRECISION_FIELDS,
    StepFlops,
    Throughput,
    build_meta_model,
    cost_per_epoch,
    count_step_flops,
    epoch_hours,
    estimate_samples_per_second,
    measured_samples_per_second,
    peak_for,
)

logger = logging.getLogger("planner")

GPU_COUNTS = (1, 2, 4, 8)

# fastai's to_fp16 and to_bf16 train with autocast, so parameters and their
# gradients stay fp32 in every precision the grid allows.
FP32_BYTES = 4

ROW_KEYS = ["task", "arch", "image_size", "precision", "classes"]
# Columns of newer long tables that also tell rows apart, used where the table has them.
OPTIONAL_ROW_KEYS = ["fit", "grad_accumulation"]

_SIZING_KEYS = ("targets", "prices", "utilization", "peak_tflops")
_TARGET_KEYS = ("model", "global_batch_size", "dataset_size", "epochs", "arch", "image_size", "precision")


@dataclass(frozen=True)
class SizingTarget:
    """A training recipe to size: the rows of one model entry, optionally narrowed, and its global batch size."""

    model: int  # index of the entry in the grid's models
    global_batch_size: int  # samples per optimizer step, summed over all GPUs
    dataset_size: int | None = None  # training samples per epoch
    epochs: float | None = None
    arch: str | None = None
    image_size: int | None = None
    precision: str | None = None

    def describe(self) -> str:
        narrowed = [f"{key}={getattr(self, key)}" for key in ("arch", "image_size", "precision") if getattr(self, key) is not None]
        suffix = f" ({', '.join(narrowed)})" if narrowed else ""
        return f"models[{self.model}]{suffix}, global batch size {self.global_batch_size}"


@dataclass(frozen=True)
class SizingSpec:
    """The grid's ``sizing`` section, validated."""

    targets: tuple[SizingTarget, ...]
    prices: dict[str, float] = field(default_factory=dict, hash=False)  # card name to price per card-hour
    utilization: float = DEFAULT_UTILIZATION
    peak_tflops: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)


# parsing ------------------------------------------------------------------


def parse_sizing(
    value: Any,
    problems: list[str],
    *,
    models: Any = None,
    cards: list[str] | None = None,
) -> SizingSpec | None:
    """Parse the grid's ``sizing`` section, appending one message per invalid value to ``problems``.

    ``models`` is the grid's raw ``models`` list: when given, each target's
    model index and narrowing keys are checked against its entry, and a
    target without ``dataset_size`` takes the entry's. ``cards`` are the
    grid's card names: when given, each price must name one of them. Leave
    it None when the grid lists ``local``, whose cards are named only at run
    time. Returns None when any value is invalid.
    """
    before = len(problems)
    if not isinstance(value, dict):
        problems.append(
            f"sizing is {value!r}, but it must be a mapping with targets and, optionally, "
            f"prices, utilization and peak_tflops"
        )
        return None
    _check_keys(value, "sizing", _SIZING_KEYS, problems)

    targets: list[SizingTarget] = []
    if "targets" not in value:
        problems.append("sizing.targets is missing: sizing needs a list of targets, each with model and global_batch_size")
    elif not isinstance(value["targets"], list) or not value["targets"]:
        problems.append(
            f"sizing.targets is {value['targets']!r}, but it must be a non-empty list of targets, "
            f"each with model and global_batch_size"
        )
    else:
        for index, item in enumerate(value["targets"]):
            target = _parse_target(item, f"sizing.targets[{index}]", models, problems)
            if target is not None:
                targets.append(target)

    prices = _parse_prices(value.get("prices", {}), cards, problems)
    utilization = _parse_utilization(value.get("utilization", DEFAULT_UTILIZATION), problems)
    peaks = _parse_peaks(value.get("peak_tflops", {}), problems)
    if len(problems) > before:
        return None
    return SizingSpec(tuple(targets), prices, utilization, peaks)


def _parse_target(item: Any, place: str, models: Any, problems: list[str]) -> SizingTarget | None:
    if not isinstance(item, dict):
        problems.append(
            f"{place} is {item!r}, but a target must be a mapping with model and global_batch_size, "
            f"for example {{model: 0, global_batch_size: 1024}}"
        )
        return None
    before = len(problems)
    _check_keys(item, place, _TARGET_KEYS, problems)

    model = item.get("model")
    entry: dict | None = None
    if "model" not in item:
        problems.append(f"{place}.model is missing: a target needs the index of its entry in models, for example model: 0")
    elif not _is_int(model) or model < 0:
        problems.append(f"{place}.model is {model!r}, but it must be the index of an entry in models (an integer from 0)")
    elif isinstance(models, list):
        if model >= len(models):
            entries = "1 entry (0)" if len(models) == 1 else f"{len(models)} entries (0 to {len(models) - 1})"
            problems.append(f"{place}.model is {model}, but models has {entries}")
        elif isinstance(models[model], dict):
            entry = models[model]
            task = "learner" if "learner" in entry else entry.get("task")
            if task in TASKS and task not in VISION_TASKS or task == LEARNER_TASK:
                # DDP gradient buckets and FLOPs are counted on torchvision models built on meta.
                problems.append(
                    f"{place}.model is {model}, a {task} entry, but sizing supports classification and "
                    f"segmentation entries only"
                )
                entry = None

    batch = item.get("global_batch_size")
    if "global_batch_size" not in item:
        problems.append(
            f"{place}.global_batch_size is missing: a target needs the global batch size of its recipe "
            f"(samples per optimizer step over all GPUs)"
        )
    elif not _is_int(batch) or batch <= 0:
        problems.append(
            f"{place}.global_batch_size is {batch!r}, but it must be a positive integer "
            f"(samples per optimizer step over all GPUs)"
        )

    dataset_size = item.get("dataset_size")
    if dataset_size is not None and (not _is_int(dataset_size) or dataset_size <= 0):
        problems.append(f"{place}.dataset_size is {dataset_size!r}, but it must be a positive integer (training samples per epoch)")
    epochs = item.get("epochs")
    if epochs is not None and (not _is_number(epochs) or epochs <= 0):
        problems.append(f"{place}.epochs is {epochs!r}, but it must be a positive number")

    _check_narrowing(item, place, model, entry, problems)
    if len(problems) > before:
        return None
    if dataset_size is None and entry is not None and _is_int(entry.get("dataset_size")):
        dataset_size = entry["dataset_size"]
    return SizingTarget(
        model, batch, dataset_size, epochs, item.get("arch"), item.get("image_size"), item.get("precision")
    )


def _check_narrowing(item: dict, place: str, model: Any, entry: dict | None, problems: list[str]) -> None:
    """Check arch, image_size and precision, and against the model entry's values when it is known."""
    narrowing = {key: item.get(key) for key in ("arch", "image_size", "precision")}
    valid = {key: value is not None for key, value in narrowing.items()}
    arch, image_size, precision = narrowing["arch"], narrowing["image_size"], narrowing["precision"]
    if arch is not None and not isinstance(arch, str):
        problems.append(f"{place}.arch is {arch!r}, but it must be an architecture name such as resnet50")
        valid["arch"] = False
    if image_size is not None and (not _is_int(image_size) or image_size <= 0):
        problems.append(f"{place}.image_size is {image_size!r}, but it must be a positive integer (pixels per side)")
        valid["image_size"] = False
    if precision is not None and precision not in PRECISIONS:
        problems.append(f"{place}.precision is {precision!r}, which is not a known precision. Use one of {', '.join(PRECISIONS)}")
        valid["precision"] = False
    if entry is None:
        return
    if _is_searched(entry.get("image_size")):
        problems.append(
            f"{place}.model is {model}, but models[{model}] searches image_size: sizing needs rows "
            f"with a fixed image size, whose batch sizes were listed or searched"
        )
        return
    listed = {
        "arch": _as_list(entry.get("arch")),
        "image_size": _as_list(entry.get("image_size")),
        "precision": _as_list(entry.get("precision", "fp32")),
    }
    for key, value in narrowing.items():
        if not valid[key] or value in listed[key]:
            continue
        choices = [str(choice) for choice in listed[key]]
        problems.append(
            f"{place}.{key} is {value!r}, which models[{model}] does not list{_did_you_mean(str(value), choices)}. "
            f"It lists: {', '.join(choices)}"
        )


def _parse_prices(value: Any, cards: list[str] | None, problems: list[str]) -> dict[str, float]:
    if not isinstance(value, dict):
        problems.append(
            f"sizing.prices is {value!r}, but it must be a mapping from card name to price per card-hour, "
            f"for example {{T4: 0.35, A100-40GB: 1.10}}"
        )
        return {}
    prices: dict[str, float] = {}
    for name, price in value.items():
        place = f"sizing.prices.{name}"
        if cards is not None and name not in cards:
            hint = _did_you_mean(str(name), cards)
            problems.append(f"{place} names no card of this grid{hint}. Cards: {', '.join(cards)}")
        elif not _is_number(price) or price <= 0:
            problems.append(f"{place} is {price!r}, but it must be a positive number (price per card-hour)")
        else:
            prices[str(name)] = float(price)
    return prices


def _parse_utilization(value: Any, problems: list[str]) -> float:
    fraction: float | None = None
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            fraction = float(value.strip()[:-1]) / 100
        except ValueError:
            fraction = None
    elif _is_number(value):
        fraction = float(value)
    if fraction is None or not 0 < fraction <= 1:
        problems.append(
            f"sizing.utilization is {value!r}, but it must be a fraction of peak throughput above 0 and "
            f"at most 1 (for example 0.4), or a percent (for example 40%)"
        )
        return DEFAULT_UTILIZATION
    return fraction


def _parse_peaks(value: Any, problems: list[str]) -> dict[str, dict[str, float]]:
    example = "for example {my-gpu: {fp32: 20, tf32: 80, fp16: 160, bf16: 160}}"
    if not isinstance(value, dict):
        problems.append(
            f"sizing.peak_tflops is {value!r}, but it must be a mapping from card name to dense peak "
            f"TFLOPS per precision, {example}"
        )
        return {}
    peaks: dict[str, dict[str, float]] = {}
    for card, rates in value.items():
        place = f"sizing.peak_tflops.{card}"
        if not isinstance(rates, dict) or not rates:
            problems.append(f"{place} is {rates!r}, but it must be a mapping with some of {', '.join(PRECISION_FIELDS)}, {example}")
            continue
        _check_keys(rates, place, PRECISION_FIELDS, problems)
        checked = {}
        for name, rate in rates.items():
            if name not in PRECISION_FIELDS:
                continue
            if not _is_number(rate) or rate <= 0:
                problems.append(f"{place}.{name} is {rate!r}, but it must be a positive number (dense TFLOPS, without sparsity)")
            else:
                checked[str(name)] = float(rate)
        peaks[str(card)] = checked
    return peaks


def _check_keys(mapping: dict, place: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    for key in mapping:
        if key not in allowed:
            hint = _did_you_mean(str(key), allowed)
            problems.append(f"{place}.{key} is not a known key{hint}. Known keys: {', '.join(allowed)}")


def _did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_searched(value: Any) -> bool:
    return value == "auto" or isinstance(value, dict)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# parameter bytes ------------------------------------------------------------


def model_key(task: str, arch: str, classes: int, image_size: int) -> str:
    """Return the key of ``param_bytes`` and ``step_flops`` for one model, for example ``classification/resnet50/10 classes/224px``."""
    return f"{task}/{arch}/{int(classes)} classes/{int(image_size)}px"


@functools.lru_cache(maxsize=None)
def count_parameter_bytes(task: str, arch: str, classes: int, image_size: int) -> int:
    """Count the bytes of the trainable parameters of the model fastai builds, as fp32.

    The model is built on the meta device with random initialisation, so no
    weights are downloaded. With ``pretrained=False`` fastai freezes nothing,
    so every parameter is trained. ``image_size`` matters for segmentation
    only: fastai's DynamicUnet sizes its decoder from it.
    """
    model = build_meta_model(task, arch, classes, image_size)
    return FP32_BYTES * sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


# sizing -----------------------------------------------------------------------


def _per_gpu_columns() -> list[str]:
    columns = []
    for gpus in GPU_COUNTS:
        columns += [
            f"accumulation_steps_{gpus}gpu",
            f"micro_batch_size_{gpus}gpu",
            f"effective_global_batch_size_{gpus}gpu",
        ]
    return columns


# The sizing table's columns, one row per target row and card.
SIZING_COLUMNS = [
    "target",  # index in sizing.targets
    "model",  # index in models
    *ROW_KEYS,
    *OPTIONAL_ROW_KEYS,  # empty where the long table has no such column
    "card",
    "card_memory_bytes",
    "limit_bytes",  # what a peak may reach: the card's budget less the headroom
    "source",  # "search" (a batch size search answered) or "grid" (listed batch sizes)
    "global_batch_size",
    "max_batch_size",  # largest per-GPU batch within the limit on one GPU
    "ddp_bytes",  # DDP's gradient buckets, added to each peak on more than one GPU
    "ddp_max_batch_size",  # largest per-GPU batch within the limit with the buckets
    "memory_accounting",
    "gpus_needed",  # GPUs that reach the global batch without accumulation
    "micro_batch_size",  # per-GPU batch on gpus_needed GPUs
    "effective_global_batch_size",  # gpus_needed times micro_batch_size, at least the global batch
    *_per_gpu_columns(),
    "samples_per_second_per_gpu",
    "throughput_source",  # "measured ..." or "estimate: ...", or why there is none
    "dataset_size",
    "epochs",
    "epoch_hours",  # on gpus_needed GPUs
    "price_per_gpu_hour",
    "cost_per_epoch",
    "total_hours",
    "total_cost",
    "note",
]

_INT_COLUMNS = [
    "target", "model", "image_size", "classes", "grad_accumulation", "card_memory_bytes", "limit_bytes", "global_batch_size",
    "max_batch_size", "ddp_bytes", "ddp_max_batch_size", "gpus_needed", "micro_batch_size",
    "effective_global_batch_size", *_per_gpu_columns(), "dataset_size",
]
_FLOAT_COLUMNS = [
    "samples_per_second_per_gpu", "epochs", "epoch_hours", "price_per_gpu_hour", "cost_per_epoch",
    "total_hours", "total_cost",
]
_STRING_COLUMNS = ["task", "arch", "precision", "fit", "card", "source", "memory_accounting", "throughput_source", "note"]


def accumulation_plan(global_batch_size: int, gpus: int, max_batch_size: int) -> tuple[int, int, int]:
    """Return the fewest accumulation steps on ``gpus`` GPUs, the per-GPU micro-batch and the effective global batch.

    Each GPU needs ceil(global / gpus) samples per optimizer step, split
    into the fewest micro-batches of at most ``max_batch_size``. The
    micro-batch is rounded up, so the effective global batch
    (gpus x steps x micro-batch) is the global batch or slightly more.
    """
    per_gpu = math.ceil(global_batch_size / gpus)
    steps = math.ceil(per_gpu / max_batch_size)
    micro = math.ceil(global_batch_size / (gpus * steps))
    return steps, micro, gpus * steps * micro


def gpus_needed(global_batch_size: int, max_batch_size: int | None, ddp_max_batch_size: int | None) -> int | None:
    """Return the fewest GPUs that reach the global batch without accumulation, or None when none do.

    One GPU needs no DDP, so its limit is ``max_batch_size``. On more GPUs
    each one carries DDP's buckets, so the limit is ``ddp_max_batch_size``.
    """
    if max_batch_size is None:
        return None
    if global_batch_size <= max_batch_size:
        return 1
    if ddp_max_batch_size is None:
        return None
    return math.ceil(global_batch_size / ddp_max_batch_size)


def size_cluster(
    trials: pd.DataFrame,
    searches: pd.DataFrame | None,
    spec: SizingSpec,
    *,
    headroom: Headroom,
    param_bytes: Mapping[str, int] | None = None,
    step_flops: Mapping[str, StepFlops] | None = None,
) -> pd.DataFrame:
    """Size a cluster for each target row and card, from the long table and the search answers.

    ``param_bytes`` and ``step_flops`` map ``model_key(...)`` to the
    parameters' fp32 bytes and the FLOPs of one training step per sample.
    Where None, they are counted on meta tensors (``count_parameter_bytes``,
    ``count_step_flops``), which imports fastai and takes about a second per
    model. Returns a frame with ``SIZING_COLUMNS``, one row per target row
    and card, and one row with only a ``note`` for a target that matches no
    trials.
    """
    searches = searches if searches is not None else pd.DataFrame(columns=["card"])
    records: list[dict[str, Any]] = []
    for number, target in enumerate(spec.targets):
        rows = _target_rows(trials, target)
        if not rows:
            records.append(
                {
                    "target": number,
                    "model": target.model,
                    "global_batch_size": target.global_batch_size,
                    "note": f"no trials of {target.describe()} with a fixed image size and no later stages",
                }
            )
            continue
        for row, searched in rows:
            for card in _cards_of(trials, row):
                sizing = _RowSizing(trials, searches, spec, target, number, row, searched, card, headroom)
                records.append(sizing.record(param_bytes, step_flops))
    frame = _sizing_frame(records)
    # Cards in the order the grid lists them (the order of trial ids), then targets and rows.
    card_order = {str(card): rank for rank, card in enumerate(trials.groupby("card")["trial"].min().sort_values().index)}
    frame["_card_rank"] = frame["card"].map(lambda card: card_order.get(card, -1) if pd.notna(card) else -1)
    frame = frame.sort_values(["_card_rank", "target", "task", "arch", "image_size", "precision"], kind="stable")
    return frame.drop(columns="_card_rank").reset_index(drop=True)


def _target_rows(trials: pd.DataFrame, target: SizingTarget) -> list[tuple[dict[str, Any], bool]]:
    """Return the rows (task, arch, image size, precision, classes...) a target names, with whether each was searched.

    Probes of an image size search vary the image size, and a progressive
    resizing trial changes it between fits, so neither names a row.
    """
    rows = trials[(trials["entry"] == target.model) & (trials["search"].isna() | (trials["search"] == "batch_size"))]
    if "later_stages" in rows:
        rows = rows[rows["later_stages"].isna()]
    for key in ("arch", "image_size", "precision"):
        wanted = getattr(target, key)
        if wanted is not None:
            rows = rows[rows[key] == wanted]
    rows = rows.sort_values("trial", kind="stable")
    keys = [*ROW_KEYS, *(key for key in OPTIONAL_ROW_KEYS if key in rows)]
    found: dict[tuple, bool] = {}
    for values in rows[[*keys, "search"]].itertuples(index=False):
        key = tuple(_plain(value) for value in values[:-1])
        searched = _plain(values[-1]) == "batch_size"
        found[key] = found.get(key, False) or searched
    return [(dict(zip(keys, key)), searched) for key, searched in found.items()]


def _cards_of(trials: pd.DataFrame, row: dict[str, Any]) -> list[str]:
    """Return the cards with trials of ``row``, in the order the grid lists them (the order of trial ids)."""
    rows = _select(trials, row)
    return [str(card) for card in rows.groupby("card")["trial"].min().sort_values().index]


def _select(frame: pd.DataFrame, row: Mapping[str, Any]) -> pd.DataFrame:
    """Return the rows of ``frame`` that match ``row`` in every key the frame has (a missing value matches a missing one)."""
    mask = pd.Series(True, index=frame.index)
    for key, value in row.items():
        if key not in frame:
            continue
        if value is None:
            mask &= frame[key].isna()
        else:
            mask &= (frame[key] == value).fillna(False).astype(bool)
    return frame[mask]


def _plain(value: Any) -> Any:
    """Turn numpy and pandas scalars into Python ones, so rows compare and print plainly."""
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _peaks_by_size(trials: pd.DataFrame) -> pd.DataFrame:
    """Return each batch size's status and highest peak over its trials (repeats count their worst)."""
    peak = trials["peak_reserved_bytes"].fillna(trials["peak_allocated_bytes"])
    frame = pd.DataFrame({"batch_size": trials["batch_size"], "status": trials["status"], "peak_bytes": peak})
    rows = []
    for size, group in frame.groupby("batch_size"):
        status = worst_status(group["status"])
        known = group["peak_bytes"].dropna()
        rows.append({"batch_size": int(size), "status": status, "peak_bytes": int(known.max()) if len(known) else None})
    frame = pd.DataFrame(rows, columns=["batch_size", "status", "peak_bytes"]).astype({"peak_bytes": "Int64"})
    return frame.sort_values("batch_size")


def worst_status(statuses: pd.Series) -> str:
    """Return "fits" when every trial fitted, else "oom" when any ran out of memory, else "error"."""
    found = set(statuses.dropna())
    if found == {"fits"}:
        return "fits"
    if "oom" in found:
        return "oom"
    return "error"


def _largest_within(sizes: pd.DataFrame, limit_bytes: int, extra_bytes: int) -> tuple[int | None, int | None]:
    """Return the largest batch size that fitted with its peak plus ``extra_bytes`` within the limit, and that peak.

    Without extra bytes a fitting size with no recorded peak counts as
    within the limit, as in the per-card tables. With extra bytes it does
    not, because nothing shows that the extra bytes fit.
    """
    best: tuple[int | None, int | None] = (None, None)
    for size, status, peak in sizes[["batch_size", "status", "peak_bytes"]].itertuples(index=False):
        if status != "fits":
            continue
        if pd.isna(peak):
            if extra_bytes:
                continue
            best = (int(size), None)
        elif peak + extra_bytes <= limit_bytes:
            best = (int(size), int(peak))
    return best


class _RowSizing:
    """The sizing of one target row on one card: the arithmetic behind one record."""

    def __init__(
        self,
        trials: pd.DataFrame,
        searches: pd.DataFrame,
        spec: SizingSpec,
        target: SizingTarget,
        number: int,
        row: dict[str, Any],
        searched: bool,
        card: str,
        headroom: Headroom,
    ) -> None:
        self.spec, self.target, self.number = spec, target, number
        self.row, self.card = row, card
        card_trials = self.card_trials = _select(trials[trials["card"] == card], row)
        self.search_row = None
        if searched:
            self.source = "search"
            candidates = card_trials[card_trials["search"] == "batch_size"]
            if "searched" in searches and len(searches):
                answers = _select(searches[(searches["card"] == card) & (searches["searched"] == "batch_size")], row)
                if len(answers):
                    self.search_row = answers.iloc[0]
        else:
            self.source = "grid"
            candidates = card_trials[card_trials["search"].isna()]
        first = card_trials.iloc[0]
        self.memory_bytes = int(first["card_memory_bytes"])
        if self.search_row is not None and pd.notna(self.search_row["limit_bytes"]):
            self.limit_bytes = int(self.search_row["limit_bytes"])
        else:
            overhead = first["card_overhead_bytes"]
            budget = self.memory_bytes - (int(overhead) if pd.notna(overhead) else 0)
            self.limit_bytes = budget - headroom.bytes_for(self.memory_bytes)
        self.sizes = _peaks_by_size(candidates)

    def record(self, param_bytes: Mapping[str, int] | None, step_flops: Mapping[str, StepFlops] | None) -> dict[str, Any]:
        target, row = self.target, self.row
        record: dict[str, Any] = {
            "target": self.number,
            "model": target.model,
            **row,
            "card": self.card,
            "card_memory_bytes": self.memory_bytes,
            "limit_bytes": self.limit_bytes,
            "source": self.source,
            "global_batch_size": target.global_batch_size,
            "dataset_size": target.dataset_size,
            "epochs": target.epochs,
            "price_per_gpu_hour": self.spec.prices.get(self.card),
        }
        notes: list[str] = []
        largest, largest_peak = self._largest_one_gpu(notes)
        ddp_bytes = self._ddp_bytes(param_bytes, notes)
        ddp_largest = ddp_peak = None
        if largest is not None and ddp_bytes is not None:
            ddp_largest, ddp_peak = _largest_within(self.sizes[self.sizes["batch_size"] <= largest], self.limit_bytes, ddp_bytes)
            if ddp_largest is None:
                notes.append(f"no {self._kind} size fits with DDP's buckets")
            elif ddp_largest < largest:
                notes.append(
                    f"with DDP the per-GPU batch drops to {ddp_largest}, the largest {self._kind} size that leaves room "
                    f"for the buckets. Searching again with {format_bytes(ddp_bytes)} more headroom would find a size "
                    f"closer to the limit"
                )
        record.update(
            max_batch_size=largest,
            ddp_bytes=ddp_bytes,
            ddp_max_batch_size=ddp_largest,
            memory_accounting=self._accounting(largest, largest_peak, ddp_bytes, ddp_largest, ddp_peak),
        )

        total = target.global_batch_size
        needed = gpus_needed(total, largest, ddp_largest)
        if needed is not None:
            micro = math.ceil(total / needed)
            record.update(gpus_needed=needed, micro_batch_size=micro, effective_global_batch_size=needed * micro)
        for gpus in GPU_COUNTS:
            limit = largest if gpus == 1 else ddp_largest
            if limit is None:
                continue
            steps, micro, effective = accumulation_plan(total, gpus, limit)
            record[f"accumulation_steps_{gpus}gpu"] = steps
            record[f"micro_batch_size_{gpus}gpu"] = micro
            record[f"effective_global_batch_size_{gpus}gpu"] = effective

        if largest is not None:
            batch = record.get("micro_batch_size") or largest
            throughput = self._throughput(batch, step_flops)
            record.update(samples_per_second_per_gpu=throughput.samples_per_second, throughput_source=throughput.source)
            self._add_time_and_cost(record, throughput.samples_per_second, needed)
        record["note"] = "; ".join(notes) if notes else None
        return record

    @property
    def _kind(self) -> str:
        return "probed" if self.source == "search" else "listed"

    def _largest_one_gpu(self, notes: list[str]) -> tuple[int | None, int | None]:
        if self.search_row is None:
            if self.source == "search":
                notes.append("no search answer for this row: the largest fitting probe is used")
            largest, peak = _largest_within(self.sizes, self.limit_bytes, 0)
            if largest is None:
                notes.append(self._nothing_fits())
            return largest, peak
        answer = self.search_row["answer"]
        if pd.notna(self.search_row["error"]):
            notes.append(f"the search failed: {self.search_row['error']}")
            return None, None
        if pd.isna(answer):
            notes.append(self._nothing_fits())
            return None, None
        peak = self.search_row["answer_peak_bytes"]
        return int(answer), (int(peak) if pd.notna(peak) else None)

    def _nothing_fits(self) -> str:
        needed = self.search_row["needed_bytes"] if self.search_row is not None else None
        if needed is not None and pd.notna(needed):
            return f"nothing fits: the smallest size needs {format_bytes(int(needed))}"
        return "nothing fits within the limit"

    def _ddp_bytes(self, param_bytes: Mapping[str, int] | None, notes: list[str]) -> int | None:
        """Return the bytes DDP adds on each GPU: its gradient buckets, as large as the fp32 gradients.

        DistributedDataParallel copies gradients into buckets (25 MiB each,
        ``bucket_cap_mb``) that together are as large as all gradients: its
        docstring in torch 2.14.1 says ``gradient_as_bucket_view=True`` saves
        "the total gradients size". That option cannot help a fastai fit,
        because fastai's ``zero_grad`` calls ``detach_()`` on each gradient,
        which the same docstring says views reject. NOTE: the allocator's
        rounding of each bucket and NCCL's buffers are not added.
        """
        row = self.row
        key = model_key(row["task"], row["arch"], row["classes"], row["image_size"])
        if param_bytes is not None:
            if key not in param_bytes:
                notes.append(f"no parameter bytes for {key}: DDP is not accounted")
            return param_bytes.get(key)
        try:
            return count_parameter_bytes(row["task"], row["arch"], int(row["classes"]), int(row["image_size"]))
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
            logger.warning("counting the parameters of %s failed: %s: %s", key, type(error).__name__, error)
            notes.append(f"counting the parameters of {key} failed ({type(error).__name__}): DDP is not accounted")
            return None

    def _accounting(
        self, largest: int | None, peak: int | None, ddp_bytes: int | None, ddp_largest: int | None, ddp_peak: int | None
    ) -> str | None:
        if largest is None:
            return None
        limit = format_bytes(self.limit_bytes)
        at_peak = f" (peak {format_bytes(peak)})" if peak is not None else ""
        if self.source == "search":
            one = f"1 GPU: search answer {largest}{at_peak} within {limit}"
        else:
            one = f"1 GPU: largest listed size within {limit} is {largest}{at_peak}"
        if ddp_bytes is None:
            return f"{one}; DDP not accounted (no parameter count)"
        kind = self._kind
        buckets = f"DDP adds {format_bytes(ddp_bytes)} of gradient buckets (fp32 gradients) to each peak"
        if ddp_largest is None:
            return f"{one}; {buckets}: no {kind} size stays within {limit}"
        return f"{one}; {buckets}: largest {kind} size within {limit} is {ddp_largest} (peak {format_bytes(ddp_peak + ddp_bytes)})"

    def _throughput(self, batch_size: int, step_flops: Mapping[str, StepFlops] | None) -> Throughput:
        row = self.row
        measured = measured_samples_per_second(self.card_trials, batch_size)
        if measured is not None:
            return measured
        peak = peak_for(self.card, self.spec.peak_tflops)
        if peak is None:
            return Throughput(None, f"no peak throughput for {self.card}: add it under sizing.peak_tflops")
        key = model_key(row["task"], row["arch"], row["classes"], row["image_size"])
        if step_flops is not None:
            flops = step_flops.get(key)
            if flops is None:
                return Throughput(None, f"no FLOP count for {key}")
        else:
            try:
                flops = count_step_flops(row["task"], row["arch"], int(row["classes"]), int(row["image_size"]))
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
                logger.warning("counting the FLOPs of %s failed: %s: %s", key, type(error).__name__, error)
                return Throughput(None, f"counting the FLOPs of {key} failed ({type(error).__name__})")
        return estimate_samples_per_second(flops, peak, row["precision"], self.spec.utilization)

    def _add_time_and_cost(self, record: dict[str, Any], samples_per_second: float | None, gpus: int | None) -> None:
        dataset_size, epochs = self.target.dataset_size, self.target.epochs
        if samples_per_second is None or dataset_size is None or gpus is None:
            return
        hours = epoch_hours(dataset_size, samples_per_second, gpus)
        record["epoch_hours"] = hours
        if epochs is not None:
            record["total_hours"] = hours * epochs
        price = record["price_per_gpu_hour"]
        if price is not None:
            cost = cost_per_epoch(dataset_size, samples_per_second, price)
            record["cost_per_epoch"] = cost
            if epochs is not None:
                record["total_cost"] = cost * epochs


def _sizing_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=SIZING_COLUMNS)
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = frame[column].astype("float64")
    for column in _STRING_COLUMNS:
        frame[column] = frame[column].astype("string")
    return frame
