"""Time simulated and emulated trials side by side on one CPU core and compare their peaks.

Usage: ``python scripts/bench_simulate.py [--output bench_simulate.md] [--repeats 3]``.

The process pins itself to core 0 with one torch thread, because the
target is the time per core. It reports the process CPU time of each
trial, which leaves out the time other processes held the core. Their load
still slows a trial through shared caches and hyperthreads, so the output
gives the load average and the CPU share of wall-clock time.

It first runs one small trial per backend, because the first fit in a
process imports and initialises more. For each model it then runs every
simulated batch size once and ``--repeats`` more times. The first run is
reported apart because, as in a grid run, the fake-tensor dispatch cache
has not yet seen the shapes that depend on the batch size. The repeats are
reported as their median. Each emulated batch size runs once. Every trial
runs on one inline card with 1 TiB of memory, so all of them fit and their
peaks can be compared. The script prints a Markdown table and writes it to
``--output``. With the default sizes it ran for 2 min 19 s on one core of
a 2-core AMD EPYC virtual machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fastai
import torch

from planner.cards import Card, MiB
from planner.grid import DEFAULT_CLASSES, TrialSpec
from workers.backends import EmulatedBackend
from workers.results import TrialResult
from workers.trial import run_simulated_trial, run_trial

# (task, architecture, image size in pixels). The U-Net runs at 128 px because
# at 256 px one emulated trial at batch size 8 took 35 s on one AMD EPYC core.
MODELS = (
    ("classification", "resnet18", 224),
    ("classification", "resnet34", 224),
    ("classification", "resnet50", 224),
    ("segmentation", "resnet34", 128),
)
SIMULATED_BATCH_SIZES = (8, 16, 64, 256, 1024)
# The emulated backend computes for real, and at batch size 16 one trial took about 16 CPU s on one AMD EPYC core.
EMULATED_BATCH_SIZES = (8, 16)

CARD = Card("bench-1TiB", 2**40)


@dataclass
class Row:
    """CPU seconds and peaks of one grid point on both backends, None where a backend did not run it."""

    task: str
    arch: str
    image_size: int
    batch_size: int
    simulated_first_seconds: float | None = None
    simulated_median_seconds: float | None = None
    emulated_seconds: float | None = None
    simulated: TrialResult | None = None
    emulated: TrialResult | None = None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default="bench_simulate.md", help="Markdown file to write the table to (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="simulated runs per batch size after the first, reported as their median (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats is {args.repeats}, but it must be at least 1")
    return args


def make_spec(task: str, arch: str, image_size: int, batch_size: int) -> TrialSpec:
    return TrialSpec(
        task=task, arch=arch, image_size=image_size, batch_size=batch_size, classes=DEFAULT_CLASSES[task]
    )


class Clock:
    """Time trials in process CPU seconds, and total their wall-clock time to show whether the core was shared."""

    def __init__(self) -> None:
        self.wall_seconds = 0.0
        self.cpu_seconds = 0.0

    def time_simulated(self, spec: TrialSpec) -> tuple[float, TrialResult]:
        return self._time(lambda: run_simulated_trial(spec, [CARD])[0])

    def time_emulated(self, spec: TrialSpec) -> tuple[float, TrialResult]:
        return self._time(lambda: run_trial(spec, EmulatedBackend(CARD)))

    def _time(self, run: Callable[[], TrialResult]) -> tuple[float, TrialResult]:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.wall_seconds += wall
        self.cpu_seconds += cpu
        return cpu, result


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warm_up() -> None:
    """Run one small trial per backend, so that one-time imports and initialisation are not timed."""
    clock = Clock()
    spec = make_spec("classification", "resnet18", 32, 2)
    for name, run in (("simulated", clock.time_simulated), ("emulated", clock.time_emulated)):
        seconds, result = run(spec)
        log(f"warm-up {name}: {seconds:.2f} CPU s, {result.status}")


def measure(repeats: int, clock: Clock) -> list[Row]:
    rows = []
    for task, arch, image_size in MODELS:
        by_batch_size: dict[int, Row] = {}
        for batch_size in sorted(set(SIMULATED_BATCH_SIZES) | set(EMULATED_BATCH_SIZES)):
            by_batch_size[batch_size] = Row(task, arch, image_size, batch_size)

        for batch_size in SIMULATED_BATCH_SIZES:
            row = by_batch_size[batch_size]
            spec = make_spec(task, arch, image_size, batch_size)
            row.simulated_first_seconds, row.simulated = clock.time_simulated(spec)
            repeated = [clock.time_simulated(spec)[0] for _ in range(repeats)]
            row.simulated_median_seconds = statistics.median(repeated)
            repeats_text = ", ".join(f"{seconds:.2f}" for seconds in repeated)
            log(
                f"simulated {arch} {task} {image_size} px bs {batch_size}: first "
                f"{row.simulated_first_seconds:.2f} CPU s, repeats {repeats_text} CPU s, {row.simulated.status}"
            )

        for batch_size in EMULATED_BATCH_SIZES:
            row = by_batch_size[batch_size]
            row.emulated_seconds, row.emulated = clock.time_emulated(make_spec(task, arch, image_size, batch_size))
            log(
                f"emulated {arch} {task} {image_size} px bs {batch_size}: "
                f"{row.emulated_seconds:.2f} CPU s, {row.emulated.status}"
            )

        rows.extend(by_batch_size[batch_size] for batch_size in sorted(by_batch_size))
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_seconds(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f}"


def format_peak(result: TrialResult | None) -> str:
    if result is None:
        return ""
    if result.status != "fits":
        return f"{result.status}: {result.error}"
    return f"{result.peak_allocated_bytes / MiB:,.1f}"


def format_difference(row: Row) -> str:
    if row.simulated is None or row.emulated is None:
        return ""
    simulated, emulated = row.simulated.peak_allocated_bytes, row.emulated.peak_allocated_bytes
    if not simulated or not emulated:
        return ""
    return f"{(simulated - emulated) / emulated:+.1%}"


def format_ratio(row: Row) -> str:
    if row.emulated_seconds is None or row.simulated_median_seconds is None:
        return ""
    return f"{row.emulated_seconds / row.simulated_median_seconds:.1f}"


def render(
    rows: list[Row], repeats: int, clock: Clock, started: datetime.datetime, load: tuple[tuple[float, ...], ...]
) -> str:
    lines = [
        f"- Date: {started.isoformat(timespec='seconds')}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, 1 used (pinned to core 0, torch.set_num_threads(1))",
        f"- Software: Python {platform.python_version()}, torch {torch.__version__}, fastai {fastai.__version__}",
        f"- Load average (1 min) at start and end: {load[0][0]:.2f}, {load[1][0]:.2f}",
        f"- CPU time of the timed trials as a share of their wall-clock time: "
        f"{clock.cpu_seconds / clock.wall_seconds:.0%} (below 100% when other processes shared core 0)",
        f"- Card: {CARD.name} ({CARD.memory_bytes // MiB:,} MiB), so that every trial fits",
        "",
        "| model | image size | batch size | simulated CPU s, first | simulated CPU s, median of "
        f"{repeats} | emulated CPU s | emulated / simulated | simulated peak allocated MiB "
        "| emulated peak allocated MiB | simulated vs emulated peak |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        cells = [
            row.arch if row.task == "classification" else f"U-Net ({row.arch})",
            str(row.image_size),
            str(row.batch_size),
            format_seconds(row.simulated_first_seconds),
            format_seconds(row.simulated_median_seconds),
            format_seconds(row.emulated_seconds),
            format_ratio(row),
            format_peak(row.simulated),
            format_peak(row.emulated),
            format_difference(row),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU s is the process CPU time of one `run_simulated_trial` or `run_trial` call, Learner "
        "construction and replay included. \"first\" is the first simulated trial at that batch size, "
        "and the median is of the runs after it. Emulated trials run once each. The ratio divides the "
        "emulated time by the simulated median.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    # fastai and torchvision warn about deprecated torch APIs on every learner.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    warm_up()
    clock = Clock()
    rows = measure(args.repeats, clock)
    table = render(rows, args.repeats, clock, started, (load_start, os.getloadavg()))

    print(table)
    Path(args.output).write_text(table)
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
