"""Check the simulated backend against a real CUDA GPU, in one run of a few minutes.

Usage::

    python scripts/validate_gpu.py [--output validate_gpu.csv] [--budget-seconds 420] [--quick]
    python scripts/validate_gpu.py --simulate-only --quick   # no GPU needed

For each point of a small fixed grid (``GRID``, or ``QUICK_GRID`` with
``--quick``) the script

1. simulates the trial once, on fake tensors on the CPU, and replays the trace
   for the whole GPU and for each emulated card (``EMULATED_CARDS``, those
   smaller than the GPU);
2. measures the trial on the GPU with no memory cap, and compares predicted
   and measured peak allocated and peak reserved memory;
3. measures it again under each emulated card's memory cap, set with
   ``torch.cuda.set_per_process_memory_fraction``, and compares predicted and
   measured fits or OOM.

It writes one row per grid point and card to ``--output`` (CSV or Parquet),
and the largest fitting batch size per model row and card to
``<stem>_max_batch`` next to it. ``<stem>.md`` contains both tables with the
GPU, versions and date, and is also printed. The files are rewritten after every grid point, so an
interrupted run leaves the rows done so far.

Without a CUDA GPU the script exits with code 2, unless ``--simulate-only`` is
given: then it runs only the simulated half, with a catalog card
(``--assume-gpu``) in place of the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from planner.cards import CATALOG, Card, GiB, format_bytes

logger = logging.getLogger("validate_gpu")

EXIT_NO_GPU = 2

NO_GPU_MESSAGE = (
    "error: no CUDA GPU found (torch.cuda.is_available() is False). "
    "Run this script on a machine with a CUDA GPU, or pass --simulate-only to run only the simulated half on the CPU."
)


@dataclass(frozen=True)
class ModelRow:
    """One architecture at one input size and precision, run at each of several batch sizes."""

    task: str
    arch: str
    image_size: int | None
    precision: str
    batch_sizes: tuple[int, ...]
    classes: int | None
    seq_len: int | None = None  # text rows: tokens per sequence
    vocab_size: int | None = None

    @property
    def label(self) -> str:
        return f"{self.task} {self.arch} {_input_size(vars(self))} {self.precision}"


def _input_size(values: dict[str, Any]) -> str:
    """Return a row's input size: pixels for images, tokens for text."""
    if values.get("image_size") is not None:
        return f"{values['image_size']}px"
    return f"{values['seq_len']} tokens"


# Batch sizes are chosen so that predicted peaks cross the emulated cards'
# budgets (4.36, 9.36, 14.26, 21.61 and 39.05 GiB) at different points.
# Predicted peak reserved memory on an H200 at each row's largest batch, from
# this script with --simulate-only: resnet18 8.1 GiB (fp32) and 4.5 GiB
# (fp16), resnet50 49.9 and 25.8 GiB, the resnet34 U-Net 10.2 and 7.7 GiB.
# Two points sit at a budget: resnet18 fp16 at 256 on the 1g.5gb slice
# (predicted to fit in 4.10 GiB by freeing cached blocks) and resnet50 fp32 at
# 256 on the L4 (21.60 of 21.61 GiB).
GRID = (
    ModelRow("classification", "resnet18", 224, "fp32", (16, 32, 64, 128, 256), 10),
    ModelRow("classification", "resnet18", 224, "fp16", (16, 32, 64, 128, 256), 10),
    ModelRow("classification", "resnet50", 224, "fp32", (16, 32, 64, 128, 256, 512), 10),
    ModelRow("classification", "resnet50", 224, "fp16", (16, 32, 64, 128, 256, 512), 10),
    ModelRow("segmentation", "resnet34", 256, "fp32", (4, 8, 16, 32), 4),
    ModelRow("segmentation", "resnet34", 256, "fp16", (4, 8, 16, 32), 4),
    # cuDNN's LSTM keeps a reserve space and a flat copy of the weights that
    # neither CPU backend allocates: these rows measure how far off that is.
    ModelRow("language_model", "AWD_LSTM", None, "fp32", (16, 64, 256), None, seq_len=72, vocab_size=60000),
    ModelRow("text_classifier", "AWD_LSTM", None, "fp16", (16, 64), 2, seq_len=720, vocab_size=60000),
)

# Seven points from GRID. Two are predicted to run out on the smallest emulated
# card only, and resnet18 fp16 at 256 is predicted to just fit it.
QUICK_GRID = (
    ModelRow("classification", "resnet18", 224, "fp32", (64, 256), 10),
    ModelRow("classification", "resnet18", 224, "fp16", (64, 256), 10),
    ModelRow("segmentation", "resnet34", 256, "fp16", (8, 32), 4),
    ModelRow("language_model", "AWD_LSTM", None, "fp32", (64,), None, seq_len=72, vocab_size=60000),
)

# Catalog cards emulated on the GPU, smallest first, each with about twice the
# budget of the one before. The A10G is left out: its memory is within 0.3% of
# the L4's. Cards with as much memory as the GPU or more are skipped at run time.
EMULATED_CARDS = ("A100-40GB-MIG-1g.5gb", "A100-40GB-MIG-2g.10gb", "T4", "L4", "A100-40GB")

# A trial small enough for any GPU, run before the grid so that the CUDA
# context, cuBLAS handles and cuDNN kernels exist before anything is measured.
WARM_UP_SPEC_ARGS = dict(task="classification", arch="resnet18", image_size=64, batch_size=4)

COLUMNS = (
    "task",
    "arch",
    "image_size",
    "seq_len",
    "precision",
    "batch_size",
    "card",
    "capacity_bytes",
    "memory_fraction",
    "predicted_status",
    "predicted_peak_allocated_bytes",
    "predicted_peak_reserved_bytes",
    "measured_status",
    "measured_by",
    "measured_peak_allocated_bytes",
    "measured_peak_reserved_bytes",
    "allocated_ratio",
    "reserved_ratio",
    "status_agrees",
    "measured_allocated_before_bytes",
    "predicted_seconds",
    "measured_seconds",
    "note",
)
MAX_BATCH_COLUMNS = (
    "task",
    "arch",
    "image_size",
    "seq_len",
    "precision",
    "card",
    "predicted_max_batch_size",
    "measured_max_batch_size",
    "agrees",
)

# Values of ``measured_status`` besides a trial's own "fits", "oom" and "error".
NOT_RUN = "not run"  # --simulate-only
SKIPPED = "skipped"  # the time budget ran out

MEASURED_BY_RUN = "run"
MEASURED_BY_INFERENCE = "inferred"


@dataclass(frozen=True)
class Target:
    """A column of the comparison: the whole GPU, or one catalog card emulated on it.

    ``simulated_card`` is the card the trace is replayed on. ``memory_fraction``
    is the cap passed to ``torch.cuda.set_per_process_memory_fraction``, or
    ``None`` for the whole GPU.
    """

    name: str
    capacity_bytes: int
    simulated_card: Card
    memory_fraction: float | None = None


@dataclass(frozen=True)
class Environment:
    """The GPU, or the catalog card used in its place, and the software versions of the run."""

    gpu_name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]
    workspace_bytes: int
    measured: bool
    driver_version: str = "-"
    cuda_runtime: str = "-"
    cudnn_version: str = "-"
    outside_allocator_bytes: int | None = None  # after the warm-up trial
    allocated_after_warm_up_bytes: int | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the simulated backend's predictions with measured trials on a real CUDA GPU.",
    )
    parser.add_argument(
        "--output",
        default="validate_gpu.csv",
        help="CSV or Parquet file for the table, one row per grid point and card (default: %(default)s). "
        "The Markdown version and the largest-batch table are written next to it.",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=420.0,
        help="wall-clock seconds for the whole run, imports included. Grid points that would not "
        "fit in what is left are skipped and listed (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help=f"run the {_count(QUICK_GRID)}-point grid instead of the {_count(GRID)}-point one")
    parser.add_argument(
        "--simulate-only",
        action="store_true",
        help="run only the simulated half, on the CPU, which needs no GPU",
    )
    parser.add_argument(
        "--assume-gpu",
        default="H200",
        choices=sorted(CATALOG),
        metavar="CARD",
        help="with --simulate-only, the catalog card simulated in place of the GPU (default: %(default)s)",
    )
    parser.add_argument(
        "--run-every-card",
        action="store_true",
        help="measure every emulated card, also those whose cap the uncapped run's peak reserved "
        "memory stayed under (slower: by default their result is inferred)",
    )
    args = parser.parse_args(argv)
    args.command = shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])
    if args.budget_seconds <= 0:
        parser.error(f"--budget-seconds is {args.budget_seconds}, but it must be positive")

    from planner.output import OutputError, check_output_path

    try:
        args.output = check_output_path(args.output)
    except OutputError as error:
        parser.error(str(error))
    return args


def _count(grid: tuple[ModelRow, ...]) -> int:
    return sum(len(row.batch_sizes) for row in grid)


def output_paths(output: Path) -> tuple[Path, Path, Path]:
    """Return the paths of the long table, the largest-batch table and the Markdown file."""
    max_batch = output.with_name(f"{output.stem}_max_batch{output.suffix}")
    markdown = output.with_suffix(".md")
    return output, max_batch, markdown


# --- Targets: what each trace is replayed on, and what each measured run is capped at ---


def workspace_bytes_for(compute_capability: tuple[int, int]) -> int:
    """Return one cuBLAS handle's workspace on a GPU of ``compute_capability``, by the catalog's rule."""
    # The rule (32 MiB on 9.0, about 8 MiB otherwise, plus 1 MiB for
    # cuBLASLt) and its source are in planner/catalog.py.
    from planner.catalog import cublas_workspace_bytes

    return cublas_workspace_bytes(compute_capability)


def emulated_targets(environment: Environment) -> list[Target]:
    """Build one target per emulated card that is smaller than the GPU.

    The cap covers only memory PyTorch's caching allocator reserves, and the
    GPU's own CUDA context lies outside it. So the capped run can reserve the
    emulated card's budget (its memory less the catalog's context estimate)
    and nothing more. The cuBLAS workspaces, however, are allocated inside the cap with the
    GPU's sizes, so the prediction compared with it is for the emulated card's
    memory and context with the GPU's workspace and compute capability.
    """
    targets = []
    for name in EMULATED_CARDS:
        card = CATALOG[name]
        if card.memory_bytes >= environment.total_memory_bytes:
            continue
        simulated = replace(
            card,
            name=f"{card.name} on {environment.gpu_name}",
            workspace_bytes=environment.workspace_bytes,
            compute_capability=environment.compute_capability,
        )
        fraction = card.budget_bytes / environment.total_memory_bytes
        targets.append(Target(card.name, card.budget_bytes, simulated, fraction))
    return targets


def whole_gpu_target(environment: Environment) -> Target:
    """Build the target for the uncapped GPU: its total less what lies outside PyTorch's allocator."""
    overhead = environment.outside_allocator_bytes or 0
    card = Card(
        environment.gpu_name,
        environment.total_memory_bytes,
        overhead,
        "local",
        environment.workspace_bytes,
        environment.compute_capability,
    )
    return Target(environment.gpu_name, card.budget_bytes, card)


# --- The environment: the GPU and software the run used ---


def stand_in_environment(card_name: str) -> Environment:
    """Describe the catalog card that --simulate-only uses in place of a GPU."""
    card = CATALOG[card_name]
    return Environment(
        gpu_name=card.name,
        total_memory_bytes=card.memory_bytes,
        compute_capability=card.compute_capability,
        workspace_bytes=card.workspace_bytes,
        measured=False,
        outside_allocator_bytes=card.overhead_bytes,
    )


def gpu_environment() -> Environment:
    """Describe the current CUDA device and the driver, CUDA and cuDNN versions."""
    device = torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(device)
    compute_capability = (properties.major, properties.minor)
    return Environment(
        gpu_name=properties.name,
        total_memory_bytes=properties.total_memory,
        compute_capability=compute_capability,
        workspace_bytes=workspace_bytes_for(compute_capability),
        measured=True,
        driver_version=nvidia_driver_version(),
        cuda_runtime=str(torch.version.cuda),
        cudnn_version=str(torch.backends.cudnn.version()),
    )


def nvidia_driver_version() -> str:
    """Return the NVIDIA driver version nvidia-smi prints, or why it could not be read.

    PyTorch exposes the CUDA runtime it was built with but not the driver.
    """
    command = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True)
    except FileNotFoundError:
        return "unknown (nvidia-smi not found)"
    except subprocess.TimeoutExpired:
        return "unknown (nvidia-smi timed out after 20 s)"
    except subprocess.CalledProcessError as error:
        return f"unknown (nvidia-smi exited with code {error.returncode})"
    lines = completed.stdout.strip().splitlines()
    return lines[0].strip() if lines else "unknown (nvidia-smi printed nothing)"


def warm_up(environment: Environment) -> Environment:
    """Run one small trial on the GPU, then record the memory it leaves outside and inside the allocator.

    Raises ``RuntimeError`` when the warm-up trial does not fit, because then
    every measured trial of the grid would fail the same way.
    """
    from planner.grid import TrialSpec
    from workers.backends import MeasuredBackend
    from workers.trial import run_trial

    card = Card(environment.gpu_name, environment.total_memory_bytes, source="local")
    result = run_trial(TrialSpec(**WARM_UP_SPEC_ARGS), MeasuredBackend(card))
    if result.status != "fits":
        raise RuntimeError(
            f"the warm-up trial {WARM_UP_SPEC_ARGS} failed with status {result.status!r}: {result.error}. "
            "Check with nvidia-smi that no other process fills the GPU, and run tests/workers/test_measured.py"
        )
    free, total = torch.cuda.mem_get_info()
    # Whatever the driver counts as used but PyTorch has not reserved: the CUDA
    # context, loaded kernels, and any other process on this GPU.
    outside = total - free - torch.cuda.memory_reserved()
    return replace(
        environment,
        outside_allocator_bytes=outside,
        allocated_after_warm_up_bytes=torch.cuda.memory_allocated(),
    )


# --- One grid point ---


def measure_once(spec, card: Card, memory_fraction: float | None):
    """Run ``spec`` on the GPU, capped at ``memory_fraction`` of its total when given."""
    from workers.backends import MeasuredBackend
    from workers.trial import run_trial

    torch.cuda.empty_cache()
    try:
        if memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(memory_fraction)
        return run_trial(spec, MeasuredBackend(card))
    finally:
        # 1.0, the default, lets the allocator reserve the whole GPU again,
        # also after a trial that raised.
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def base_row(row: ModelRow, batch_size: int, target: Target) -> dict[str, Any]:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(
        task=row.task,
        arch=row.arch,
        image_size=row.image_size,
        seq_len=row.seq_len,
        precision=row.precision,
        batch_size=batch_size,
        card=target.name,
        capacity_bytes=target.capacity_bytes,
        memory_fraction=target.memory_fraction,
        note="",
    )
    return values


def record_prediction(values: dict[str, Any], prediction) -> None:
    values.update(
        predicted_status=prediction.status,
        predicted_peak_allocated_bytes=prediction.peak_allocated_bytes,
        predicted_peak_reserved_bytes=prediction.peak_reserved_bytes,
        predicted_seconds=round(prediction.seconds, 3),
    )
    if prediction.status == "error":
        values["note"] = f"simulation: {prediction.error}"


def record_measurement(values: dict[str, Any], result, measured_by: str, allocated_before: int | None) -> None:
    values.update(
        measured_status=result.status,
        measured_by=measured_by,
        measured_peak_allocated_bytes=result.peak_allocated_bytes,
        measured_peak_reserved_bytes=result.peak_reserved_bytes,
        measured_allocated_before_bytes=allocated_before,
        measured_seconds=round(result.seconds, 3) if measured_by == MEASURED_BY_RUN else None,
    )
    if result.status != "fits" and result.error:
        _append_note(values, f"measured: {result.error}")


def _append_note(values: dict[str, Any], text: str) -> None:
    values["note"] = f"{values['note']}; {text}" if values["note"] else text


def compare(values: dict[str, Any]) -> None:
    """Fill in the ratios and whether the predicted and measured statuses agree."""
    predicted, measured = values["predicted_status"], values["measured_status"]
    definite = ("fits", "oom")
    if predicted in definite and measured in definite:
        values["status_agrees"] = "yes" if predicted == measured else "no"
    # The peaks of a trial that ran out of memory depend on where it stopped,
    # so ratios are given only when both sides fitted.
    if predicted == measured == "fits":
        for kind in ("allocated", "reserved"):
            measured_bytes = values[f"measured_peak_{kind}_bytes"]
            if measured_bytes:
                values[f"{kind}_ratio"] = round(values[f"predicted_peak_{kind}_bytes"] / measured_bytes, 4)


def run_point(
    row: ModelRow,
    batch_size: int,
    targets: list[Target],
    *,
    measure: bool,
    infer: bool,
    deadline: float,
) -> list[dict[str, Any]]:
    """Simulate one grid point on every target, then measure it on the GPU when ``measure`` is set.

    Returns one row per target, in the order of ``targets``.
    """
    from planner.grid import TrialSpec
    from workers.trial import run_simulated_trial

    spec = TrialSpec(
        task=row.task,
        arch=row.arch,
        image_size=row.image_size,
        batch_size=batch_size,
        precision=row.precision,
        classes=row.classes,
        seq_len=row.seq_len,
        vocab_size=row.vocab_size,
    )
    rows = [base_row(row, batch_size, target) for target in targets]
    predictions = run_simulated_trial(spec, [target.simulated_card for target in targets])
    for values, prediction in zip(rows, predictions):
        record_prediction(values, prediction)

    if not measure:
        for values in rows:
            values["measured_status"] = NOT_RUN
        return rows

    measure_point(spec, targets, rows, infer=infer, deadline=deadline)
    for values in rows:
        compare(values)
    return rows


def measure_point(spec, targets: list[Target], rows: list[dict[str, Any]], *, infer: bool, deadline: float) -> None:
    """Measure ``spec`` uncapped on the GPU (``targets[0]``), then under each emulated card's cap.

    An emulated card is not run when ``infer`` is set and the uncapped run's
    peak reserved memory is at or below its cap. PyTorch's caching allocator
    checks the cap only when reserved memory plus a new segment would exceed
    it (``alloc_block`` in c10/cuda/CUDACachingAllocator.cpp), so the capped
    run would make the same allocations and fit.
    """
    whole_gpu, emulated = targets[0], targets[1:]
    allocated_before = torch.cuda.memory_allocated()
    uncapped = measure_once(spec, whole_gpu.simulated_card, None)
    record_measurement(rows[0], uncapped, MEASURED_BY_RUN, allocated_before)

    for target, values in zip(emulated, rows[1:]):
        if infer and uncapped.status == "fits" and uncapped.peak_reserved_bytes <= target.capacity_bytes:
            record_measurement(values, uncapped, MEASURED_BY_INFERENCE, allocated_before)
        elif uncapped.status == "error":
            values["measured_status"] = SKIPPED
            _append_note(values, "skipped: the uncapped run failed")
        elif time.monotonic() >= deadline:
            values["measured_status"] = SKIPPED
            _append_note(values, "skipped: the time budget ran out during this grid point")
        else:
            before = torch.cuda.memory_allocated()
            result = measure_once(spec, target.simulated_card, target.memory_fraction)
            record_measurement(values, result, MEASURED_BY_RUN, before)


def _tally(statuses) -> str:
    """Count statuses for a progress line, as in "fits x5, oom x1"."""
    return ", ".join(f"{status} x{count}" for status, count in Counter(statuses).items())


def skipped_rows(row: ModelRow, batch_size: int, targets: list[Target], reason: str) -> list[dict[str, Any]]:
    rows = [base_row(row, batch_size, target) for target in targets]
    for values in rows:
        values.update(predicted_status=SKIPPED, measured_status=SKIPPED, note=reason)
    return rows


# --- Tables ---


def max_batch_text(statuses: dict[int, str]) -> str:
    """Return the largest batch size whose status is "fits", as text.

    "none" means every batch size ran out of memory. ">=N" means a larger
    batch size was skipped or failed, so N is a lower bound. An empty string
    means no batch size has a fits-or-OOM status (not run).
    """
    definite = {batch: status for batch, status in statuses.items() if status in ("fits", "oom")}
    if not definite:
        return ""
    fitting = [batch for batch, status in definite.items() if status == "fits"]
    largest = max(fitting, default=None)
    unknown_above = any(batch > (largest or 0) for batch in statuses if batch not in definite)
    if largest is None:
        return "unknown" if unknown_above else "none"
    return f">={largest}" if unknown_above else str(largest)


def max_batch_rows(rows: list[dict[str, Any]], grid: tuple[ModelRow, ...], cards: list[str]) -> list[dict[str, Any]]:
    """Summarise the long table as the largest fitting batch size per model row and card."""
    summary = []
    for model in grid:
        for card in cards:
            matching = [
                values
                for values in rows
                if values["card"] == card
                and (values["task"], values["arch"], values["image_size"], values["seq_len"], values["precision"])
                == (model.task, model.arch, model.image_size, model.seq_len, model.precision)
            ]
            predicted = max_batch_text({values["batch_size"]: values["predicted_status"] for values in matching})
            measured = max_batch_text({values["batch_size"]: values["measured_status"] for values in matching})
            # Only two exact values can agree or disagree: "" (not run),
            # "unknown" and ">=N" leave the true largest batch size open.
            exact = [value for value in (predicted, measured) if value and value != "unknown" and not value.startswith(">=")]
            agrees = ""
            if len(exact) == 2:
                agrees = "yes" if predicted == measured else "no"
            summary.append(
                dict(
                    task=model.task,
                    arch=model.arch,
                    image_size=model.image_size,
                    seq_len=model.seq_len,
                    precision=model.precision,
                    card=card,
                    predicted_max_batch_size=predicted,
                    measured_max_batch_size=measured,
                    agrees=agrees,
                )
            )
    return summary


def _gib(size: int | None) -> str:
    return "-" if size is None else f"{size / GiB:.2f}"


def _status_cell(status: str | None, reserved: int | None) -> str:
    if status in ("fits", "oom") and reserved is not None:
        return f"{status} {_gib(reserved)}"
    return status or "-"


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(cells) for cells in body)]


def markdown_report(
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    environment: Environment,
    *,
    args: argparse.Namespace,
    started_at: datetime.datetime,
    elapsed_seconds: float,
    finished: bool,
    infer: bool,
) -> str:
    """Render the run's environment, both tables and how to read them as Markdown."""
    import fastai

    lines = ["# Simulated backend against a CUDA GPU", ""]
    if not finished:
        lines += ["**Run in progress or interrupted: the tables hold the grid points done so far.**", ""]
    lines += _environment_lines(environment, args, started_at, elapsed_seconds, fastai.__version__)
    lines += ["", "## How to read this", ""]
    lines += _reading_notes(environment, infer)

    lines += ["", "## Trials", ""]
    lines += [
        "Cells read status and peak reserved memory in GiB. Ratios are predicted / measured and "
        "are given where both sides fitted.",
        "",
    ]
    header = ["point", "card", "budget GiB", "predicted", "measured", "by", "alloc ratio", "reserved ratio", "agrees", "note"]
    body = []
    for values in rows:
        note_lines = (values["note"] or "").splitlines()
        note = note_lines[0] if note_lines else ""
        body.append(
            [
                _point_key(values),
                values["card"],
                _gib(values["capacity_bytes"]),
                _status_cell(values["predicted_status"], values["predicted_peak_reserved_bytes"]),
                _status_cell(values["measured_status"], values["measured_peak_reserved_bytes"]),
                values["measured_by"] or "",
                "" if values["allocated_ratio"] is None else f"{values['allocated_ratio']:.3f}",
                "" if values["reserved_ratio"] is None else f"{values['reserved_ratio']:.3f}",
                values["status_agrees"] or "",
                note[:120],
            ]
        )
    lines += _markdown_table(header, body)

    lines += ["", "## Largest fitting batch size", ""]
    header = ["model row", "card", "predicted", "measured", "agrees"]
    body = [
        [
            f"{values['task']} {values['arch']} {_input_size(values)} {values['precision']}",
            values["card"],
            values["predicted_max_batch_size"],
            values["measured_max_batch_size"],
            values["agrees"],
        ]
        for values in summary
    ]
    lines += _markdown_table(header, body)

    skipped = sorted({_point_key(values) for values in rows if values["predicted_status"] == SKIPPED})
    lines += ["", "## Skipped", ""]
    if skipped:
        lines.append(
            f"{len(skipped)} grid points were skipped because the time budget of "
            f"{args.budget_seconds:g} s ran out: {', '.join(skipped)}."
        )
    else:
        lines.append("No grid point was skipped.")
    partial = sum(1 for values in rows if values["measured_status"] == SKIPPED and values["predicted_status"] != SKIPPED)
    if partial:
        lines.append(f"{partial} emulated-card runs inside started grid points were skipped (see their notes).")
    return "\n".join(lines) + "\n"


def _point_key(values: dict[str, Any]) -> str:
    return f"{values['task']} {values['arch']} {_input_size(values)} {values['precision']} bs {values['batch_size']}"


def _environment_lines(
    environment: Environment,
    args: argparse.Namespace,
    started_at: datetime.datetime,
    elapsed_seconds: float,
    fastai_version: str,
) -> list[str]:
    capability = ".".join(map(str, environment.compute_capability))
    if environment.measured:
        gpu = f"{environment.gpu_name}, total_memory {environment.total_memory_bytes:,} bytes ({format_bytes(environment.total_memory_bytes)})"
    else:
        gpu = f"none (--simulate-only): catalog card {environment.gpu_name} ({format_bytes(environment.total_memory_bytes)}) in its place"
    lines = [
        f"- GPU: {gpu}, compute capability {capability}",
        f"- NVIDIA driver: {environment.driver_version}; CUDA runtime of torch: {environment.cuda_runtime}; cuDNN: {environment.cudnn_version}",
        f"- torch {torch.__version__}, fastai {fastai_version}, Python {sys.version.split()[0]}",
        f"- started {started_at.isoformat(timespec='seconds')}, {elapsed_seconds:.0f} s of a {args.budget_seconds:g} s budget used",
        f"- command: `{args.command}`",
        f"- PYTORCH_CUDA_ALLOC_CONF: {os.environ.get('PYTORCH_CUDA_ALLOC_CONF', 'unset')}; "
        f"CUBLAS_WORKSPACE_CONFIG: {os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')}",
        f"- cuBLAS workspace assumed per handle: {format_bytes(environment.workspace_bytes)} "
        f"(two handles per trial, catalog rule for compute capability {capability})",
    ]
    if environment.measured:
        lines.append(
            f"- after the warm-up trial: {format_bytes(environment.outside_allocator_bytes)} in use outside "
            f"PyTorch's allocator (CUDA context, kernels, other processes); "
            f"{format_bytes(environment.allocated_after_warm_up_bytes)} still allocated, which should be the "
            f"cuBLAS workspaces PyTorch keeps (assumed: {format_bytes(2 * environment.workspace_bytes)})"
        )
    return lines


def _reading_notes(environment: Environment, infer: bool) -> list[str]:
    notes = [
        "- **predicted**: the simulated backend (fake tensors on the CPU, replayed through the model of "
        "PyTorch's caching allocator). **measured**: `torch.cuda.max_memory_allocated` / "
        "`max_memory_reserved` of a fastai fit on the GPU, reset before each trial.",
        f"- **{environment.gpu_name}** rows: the GPU with no cap. The simulated card has the GPU's total "
        "memory less the memory in use outside PyTorch's allocator after the warm-up trial"
        + ("." if environment.measured else "; with --simulate-only, the catalog's context estimate instead."),
        "- **Emulated cards**: the measured run is capped with "
        "`torch.cuda.set_per_process_memory_fraction(card budget / total_memory)`, where the card budget "
        "(column budget) is the catalog card's memory less the catalog's CUDA-context estimate for it. The "
        "cap limits only the memory PyTorch's allocator reserves, so this GPU's own context is not counted "
        "on either side. The cuBLAS workspaces PyTorch allocates inside the cap have this GPU's size, so "
        "the prediction is for a card with the emulated card's memory and context but this GPU's "
        "workspace and compute capability. This comparison therefore tests the trace and the allocator "
        "model, not the catalog's memory totals or context estimates.",
    ]
    if environment.measured:
        if infer:
            notes.append(
                "- **by = inferred**: the capped run was not repeated, because the uncapped run's peak "
                "reserved memory is at or below the cap. PyTorch's allocator checks the cap only when "
                "reserved memory plus a new segment would exceed it, so the capped run would make the "
                "same allocations. `--run-every-card` runs them anyway."
            )
        else:
            notes.append("- Every emulated card was measured under its cap (no inferred results).")
    else:
        notes.append("- Nothing was measured: this was a --simulate-only run, so measured columns read 'not run'.")
    notes.append(
        "- Batch sizes of the largest-batch table: `>=N` means a larger batch size was skipped or "
        "failed, `none` that every batch size ran out of memory, `unknown` that none fitted and a "
        "larger one was skipped or failed."
    )
    return notes


# --- Output ---


def write_outputs(
    rows: list[dict[str, Any]],
    summary: list[dict[str, Any]],
    markdown: str,
    paths: tuple[Path, Path, Path],
) -> None:
    """Write both tables and the Markdown report, each atomically."""
    import pandas as pd

    from planner.output import write_results

    table_path, max_batch_path, markdown_path = paths
    write_results(pd.DataFrame(rows, columns=list(COLUMNS)), table_path)
    write_results(pd.DataFrame(summary, columns=list(MAX_BATCH_COLUMNS)), max_batch_path)
    temporary = markdown_path.with_name(f".{markdown_path.name}.{os.getpid()}.tmp")
    temporary.write_text(markdown)
    os.replace(temporary, markdown_path)


# --- Main ---


def cuda_gpu_present() -> bool:
    """Return whether ``torch.cuda.is_available()`` finds a CUDA GPU. Tests replace it to run the measured path on the CPU."""
    return torch.cuda.is_available()


@dataclass
class Run:
    """One run of the script: its settings, the targets, and the rows done so far."""

    args: argparse.Namespace
    environment: Environment
    targets: list[Target]
    grid: tuple[ModelRow, ...]
    infer: bool
    started: float  # time.monotonic() at start
    started_at: datetime.datetime
    rows: list[dict[str, Any]]

    @property
    def deadline(self) -> float:
        return self.started + self.args.budget_seconds


def run_grid(run: Run) -> None:
    """Run every grid point that fits in the time budget, rewriting the outputs after each."""
    longest_point = 0.0
    total = _count(run.grid)
    index = 0
    for model in run.grid:
        for batch_size in model.batch_sizes:
            index += 1
            left = run.deadline - time.monotonic()
            # NOTE: an estimate: the next point is assumed to take no longer
            # than the longest so far, but larger batches take longer to
            # measure, so a run can overshoot the budget by part of a point.
            if left <= 0:
                reason = f"skipped: the time budget of {run.args.budget_seconds:g} s ran out"
            elif left < longest_point:
                reason = f"skipped: {left:.0f} s of the budget left, less than the longest grid point so far ({longest_point:.0f} s)"
            else:
                reason = None
            if reason:
                run.rows.extend(skipped_rows(model, batch_size, run.targets, reason))
                logger.info("[%d/%d] %s bs %d %s", index, total, model.label, batch_size, reason)
                continue

            point_started = time.monotonic()
            point_rows = run_point(
                model,
                batch_size,
                run.targets,
                measure=run.environment.measured,
                infer=run.infer,
                deadline=run.deadline,
            )
            run.rows.extend(point_rows)
            seconds = time.monotonic() - point_started
            longest_point = max(longest_point, seconds)
            logger.info(
                "[%d/%d] %s bs %d in %.1f s: predicted %s; measured %s",
                index,
                total,
                model.label,
                batch_size,
                seconds,
                _tally(values["predicted_status"] for values in point_rows),
                _tally(values["measured_status"] for values in point_rows),
            )
            write_report(run, finished=False)


def write_report(run: Run, *, finished: bool) -> str:
    """Write the tables and the Markdown report of the rows so far, and return the Markdown."""
    cards = [target.name for target in run.targets]
    summary = max_batch_rows(run.rows, run.grid, cards)
    markdown = markdown_report(
        run.rows,
        summary,
        run.environment,
        args=run.args,
        started_at=run.started_at,
        elapsed_seconds=time.monotonic() - run.started,
        finished=finished,
        infer=run.infer,
    )
    write_outputs(run.rows, summary, markdown, output_paths(run.args.output))
    return markdown


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    args = parse_args(argv)
    if not args.simulate_only and not cuda_gpu_present():
        print(NO_GPU_MESSAGE, file=sys.stderr)
        return EXIT_NO_GPU

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # fastai and torchvision warn about deprecated arguments on every learner,
    # and each trial's result already records what matters (as in workers/actor.py).
    warnings.filterwarnings("ignore")

    # garbage_collection_threshold frees cached blocks once reserved memory
    # passes a share of what the process may use, so under a cap blocks are
    # freed earlier and a capped run can differ from the uncapped one.
    allocator_config = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    infer = not args.run_every_card and "garbage_collection_threshold" not in allocator_config

    if args.simulate_only:
        environment = stand_in_environment(args.assume_gpu)
    else:
        environment = gpu_environment()
        logger.info("warming up on %s", environment.gpu_name)
        try:
            environment = warm_up(environment)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    targets = [whole_gpu_target(environment), *emulated_targets(environment)]
    grid = QUICK_GRID if args.quick else GRID
    logger.info(
        "%d grid points on %s, emulating %s; budget %g s",
        _count(grid),
        environment.gpu_name,
        ", ".join(target.name for target in targets[1:]) or "no smaller card",
        args.budget_seconds,
    )

    run = Run(args, environment, targets, grid, infer, started, started_at, rows=[])
    run_grid(run)
    print(write_report(run, finished=True))
    written = ", ".join(str(path) for path in output_paths(args.output))
    logger.info("wrote %s in %.0f s", written, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
