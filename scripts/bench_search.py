"""Compare the planner's batch-size search with Lightning's and accelerate's on the same trials.

Usage: ``python scripts/bench_search.py [--quick] [--truth window|exhaustive] [--output bench_search.md]``.

For every setup (model, image size, precision) and card, four methods look
for a batch size that fits:

- ``planner``: ``planner.search.SizeSearch`` with ``parallel=False``, and for
  simulated cards also with ``parallel=True``, driven as the driver drives it.
- ``lightning``: PyTorch Lightning's ``BatchSizeFinder(mode="binsearch")`` with
  its defaults ``init_val=2`` and ``max_trials=25``: double from 2 until a
  size runs out of memory, then bisect between the last size that fitted and
  the one that failed. The steps are those of ``_run_binary_scaling`` and
  ``_adjust_batch_size`` in ``src/lightning/pytorch/tuner/batch_size_scaling.py``
  (Lightning-AI/pytorch-lightning, commit a9ca6b1bb4d1150088290a4529ba1b6c6d5c5965).
- ``accelerate``: HF accelerate's ``find_executable_batch_size``: try the start
  size, and after each out-of-memory error try ``int(batch_size * 0.9)``, as the
  default ``reduce_batch_size_fn`` of ``src/accelerate/utils/memory.py`` does in
  the accelerate releases that have that argument. Older releases halve instead
  (``batch_size //= 2``, huggingface/accelerate commit 4e48dde92947acb42718aa0da01a9fb148465ce0).
  It returns the first size that fits, so it is not expected to find the largest.
- ``truth``: the largest size such that it and every smaller size fit.
  ``--truth exhaustive`` runs every size of the range on simulated setups,
  which is about 2,000 simulated trials per setup and takes hours on a CPU.
  ``--truth window`` (the default, and always used on emulated setups) runs
  only a few sizes below the boundary (see ``find_truth``).

All methods of one setup read trial outcomes from one cache, so a batch size
runs once and every method gets the same outcome for it. A simulated trial
traces a size once and replays it on every card of the setup, and an emulated
trial runs one size on one card. A method's trials are the distinct sizes it
requests on a card, and its seconds are the sum of those trials' seconds (see
``TrialCache.seconds``). The script prints a Markdown table and writes it to
``--output``. The full run took 23 min on a 2-core AMD EPYC virtual machine
shared with other work (load average about 3), 502 simulated and 50 emulated
trials. ``--quick`` took 1.7 min there.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import fastai
import torch

from planner.cards import CATALOG, Card, GiB, MiB
from planner.grid import DEFAULT_CLASSES, AutoRange, TrialSpec
from planner.search import Probe, SizeSearch
from workers.backends import EmulatedBackend
from workers.results import TrialResult
from workers.trial import run_simulated_trial, run_trial

# Lightning's defaults for BatchSizeFinder and _scale_batch_size (batch_size_scaling.py, commit above).
LIGHTNING_INIT_VAL = 2
LIGHTNING_MAX_TRIALS = 25

# accelerate's default reduce_batch_size_fn multiplies by this after each OOM.
ACCELERATE_FACTOR = 0.9

SIMULATED_CARDS = ("T4", "A10G", "A100-40GB", "H100-80GB")
SIMULATED_BOUNDS = AutoRange(2, 2048, 1)
SIMULATED_ACCELERATE_START = 512

# (task, architecture, image size in pixels, precision)
SIMULATED_MODELS = (
    ("classification", "resnet18", 224, "fp32"),
    ("classification", "resnet18", 224, "fp16"),
    ("classification", "resnet50", 224, "fp32"),
    ("classification", "resnet50", 224, "fp16"),
    ("segmentation", "resnet34", 256, "fp32"),
)

# The emulated backend computes for real, so its model and sizes stay small.
# A resnet18 at 32 px reserves about 216 MiB at batch size 2 and about 324 MiB
# at 256 on the emulated backend, so these cards put the boundary inside the range.
EMULATED_CARDS = (Card("emulated-256MiB", 256 * MiB), Card("emulated-300MiB", 300 * MiB))
EMULATED_MODEL = ("classification", "resnet18", 32, "fp32")
EMULATED_BOUNDS = AutoRange(2, 256, 1)
EMULATED_ACCELERATE_START = 256  # the range's maximum: 512 is above it

# Stops a planner search whose next_sizes never empties.
MAX_PLANNER_ROUNDS = 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# setups and trials ----------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One row group: a model, image size and precision, with the cards and batch range it is searched on."""

    backend: str  # "simulated" or "emulated"
    task: str
    arch: str
    image_size: int
    precision: str
    cards: tuple[Card, ...]
    bounds: AutoRange
    accelerate_start: int

    @property
    def label(self) -> str:
        model = self.arch if self.task == "classification" else f"U-Net {self.arch}"
        return f"{model} {self.image_size}px {self.precision}"

    def spec(self, batch_size: int) -> TrialSpec:
        return TrialSpec(
            self.task,
            self.arch,
            self.image_size,
            batch_size,
            precision=self.precision,
            classes=DEFAULT_CLASSES[self.task],
        )


class TrialError(RuntimeError):
    """A trial failed with an error other than running out of memory."""


class TrialCache:
    """Trial results of one setup, by card and batch size, so that each size runs once for every method."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.results: dict[tuple[str, int], TrialResult] = {}
        self._seconds: dict[tuple[str, int], float] = {}
        self.wall_seconds = 0.0

    def result(self, card: Card, size: int) -> TrialResult:
        key = (card.name, size)
        if key not in self.results:
            if self.setup.backend == "simulated":
                self._run_simulated(size)
            else:
                self._run_emulated(card, size)
        return self.results[key]

    def seconds(self, card: Card, size: int) -> float:
        """Seconds that one probe of ``size`` costs on ``card``.

        A simulated call traces the size once and replays it on every card of
        the setup. ``run_simulated_trial`` gives each card an equal share of
        the trace plus its own replay, so the sum over the cards is the whole
        call, which is charged to each card: one card alone saves only the
        other cards' replays.
        """
        return self._seconds[(card.name, size)]

    def _run_simulated(self, size: int) -> None:
        started = time.perf_counter()
        results = run_simulated_trial(self.setup.spec(size), list(self.setup.cards))
        self.wall_seconds += time.perf_counter() - started
        total = sum(result.seconds for result in results)
        for card, result in zip(self.setup.cards, results):
            self.results[(card.name, size)] = result
            self._seconds[(card.name, size)] = total
        log(f"  simulated {self.setup.label} bs {size}: {total:.2f} s, " + ", ".join(r.status for r in results))

    def _run_emulated(self, card: Card, size: int) -> None:
        started = time.perf_counter()
        result = run_trial(self.setup.spec(size), EmulatedBackend(card))
        self.wall_seconds += time.perf_counter() - started
        self.results[(card.name, size)] = result
        self._seconds[(card.name, size)] = result.seconds
        log(f"  emulated {self.setup.label} {card.name} bs {size}: {result.seconds:.2f} s, {result.status}")

    def first_failure(self, card: Card) -> int | None:
        """Return the smallest size that ran out of memory on ``card`` among the sizes run so far."""
        failed = [size for (name, size), result in self.results.items() if name == card.name and result.status == "oom"]
        return min(failed) if failed else None


class MethodTrials:
    """One method's view of the cache on one card: the distinct sizes it requested and their seconds."""

    def __init__(self, cache: TrialCache, card: Card) -> None:
        self.cache = cache
        self.card = card
        self.sizes: list[int] = []  # in the order first requested

    def run(self, size: int) -> TrialResult:
        """Return the trial at ``size``. Raises ``TrialError`` when it failed with an error other than OOM."""
        if size not in self.sizes:
            self.sizes.append(size)
        result = self.cache.result(self.card, size)
        if result.status == "error":
            raise TrialError(f"batch size {size}: {result.error}")
        return result

    def fits(self, size: int) -> bool:
        return self.run(size).status == "fits"

    @property
    def trials(self) -> int:
        return len(self.sizes)

    @property
    def seconds(self) -> float:
        return sum(self.cache.seconds(self.card, size) for size in self.sizes)


@dataclass
class Outcome:
    """One method's answer on one card, with the trials and seconds it cost."""

    answer: int | None
    trials: int
    seconds: float
    sizes: list[int]
    rounds: int | None = None  # planner only: rounds of next_sizes
    error: str | None = None
    note: str | None = None


def finish(trials: MethodTrials, answer: int | None, **extra) -> Outcome:
    return Outcome(answer, trials.trials, trials.seconds, list(trials.sizes), **extra)


# the methods ----------------------------------------------------------------


def run_planner(cache: TrialCache, card: Card, bounds: AutoRange, parallel: bool) -> Outcome:
    """Drive ``SizeSearch`` round by round, as ``planner.search_runner`` does for one search with one repeat."""
    trials = MethodTrials(cache, card)
    search = SizeSearch(bounds, limit_bytes=card.budget_bytes, parallel=parallel)
    rounds = 0
    try:
        while sizes := search.next_sizes():
            rounds += 1
            if rounds > MAX_PLANNER_ROUNDS:
                return finish(trials, None, rounds=rounds, error=f"next_sizes still returned {sizes} after {MAX_PLANNER_ROUNDS} rounds")
            for size in sizes:
                result = trials.run(size)
                fitted = result.status == "fits"
                search.record(
                    Probe(
                        size,
                        result.status,
                        result.peak_reserved_bytes if fitted else None,
                        needed_bytes=result.needed_bytes,
                    )
                )
    except TrialError as error:
        return finish(trials, None, rounds=rounds, error=str(error))
    return finish(trials, search.answer, rounds=rounds, note=search.warning)


def run_lightning_binsearch(cache: TrialCache, card: Card, dataset_length: int) -> Outcome:
    """Reproduce Lightning's ``_run_binary_scaling`` step by step, with ``init_val=2`` and ``max_trials=25``.

    ``dataset_length`` is the training set's length, Lightning's only upper
    bound on the batch size: ``_adjust_batch_size`` leaves the batch size
    unchanged once the current one is at least that long. So after an OOM at
    such a size, the bisection retries the same size forever, because the
    midpoint is never applied. This function detects that state, notes it,
    and continues the bisection without the length check, as with a longer
    dataset, so that the trials stay comparable.
    NOTE: the endless retry is read from the code at the commit above, not run in Lightning.
    """
    trials = MethodTrials(cache, card)
    model_batch_size = LIGHTNING_INIT_VAL  # _scale_batch_size sets init_val before the search
    length_check = True
    note = None

    def adjust(value: int | None = None, factor: float = 1.0) -> tuple[int, bool]:
        nonlocal model_batch_size
        if length_check and model_batch_size >= dataset_length:
            return model_batch_size, False
        new_size = value if value is not None else int(model_batch_size * factor)
        changed = new_size != model_batch_size
        model_batch_size = new_size
        return new_size, changed

    new_size = model_batch_size
    low, high, count = 1, None, 0
    seen_states: set[tuple[int, int, int | None]] = set()
    try:
        while True:
            state = (new_size, low, high)
            if state in seen_states:
                note = (
                    f"Lightning re-runs batch size {new_size} forever here: it ran out of memory, and "
                    f"_adjust_batch_size skips the midpoint because {new_size} >= the dataset length {dataset_length}; "
                    "shown: the bisection continued without that check"
                )
                length_check = False
                seen_states.clear()
                new_size, _ = adjust(value=(high + low) // 2)
                continue
            seen_states.add(state)

            if trials.fits(new_size):
                count += 1
                if count > LIGHTNING_MAX_TRIALS:
                    note = f"stopped by max_trials={LIGHTNING_MAX_TRIALS}"
                    break
                low = new_size
                if high:
                    if high - low <= 1:
                        break
                    new_size, changed = adjust(value=(high + low) // 2)
                else:
                    new_size, changed = adjust(factor=2.0)
                if not changed:
                    break
            else:
                high = new_size
                new_size, _ = adjust(value=(high + low) // 2)
                if high - low <= 1:
                    break
    except TrialError as error:
        return finish(trials, None, error=str(error))
    if new_size not in trials.sizes:
        # Lightning returns low = 1 without running it when init_val itself runs out of memory.
        note = f"returned {new_size} without running it"
    return finish(trials, new_size, note=note)


def run_accelerate(cache: TrialCache, card: Card, start: int) -> Outcome:
    """Reproduce accelerate's ``find_executable_batch_size`` with its default 10 % reduction."""
    trials = MethodTrials(cache, card)
    batch_size = start
    try:
        while True:
            if batch_size == 0:
                return finish(trials, None, error="No executable batch size found, reached zero.")
            if trials.fits(batch_size):
                return finish(trials, batch_size)
            batch_size = int(batch_size * ACCELERATE_FACTOR)
    except TrialError as error:
        return finish(trials, None, error=str(error))


def find_truth(cache: TrialCache, card: Card, bounds: AutoRange, mode: str, window: int) -> Outcome:
    """Find the largest size that fits with every smaller size fitting too.

    ``exhaustive`` runs every size of the range from the smallest up to the
    first failure. ``window`` starts from the smallest failure the methods
    saw (else the range's maximum) and runs every size in the ``window``
    sizes below it, moving down whenever one of them fails. It trusts every
    size below the window that no method ran.
    """
    trials = MethodTrials(cache, card)
    low, high = bounds.minimum, bounds.maximum
    try:
        if mode == "exhaustive":
            for size in range(low, high + 1):
                if not trials.fits(size):
                    return finish(trials, size - 1 if size > low else None)
            return finish(trials, high)

        ceiling = cache.first_failure(card)
        ceiling = high + 1 if ceiling is None else ceiling
        size = ceiling - 1
        while size >= max(low, ceiling - window):
            if not trials.fits(size):
                ceiling = size
            size -= 1
    except TrialError as error:
        return finish(trials, None, error=str(error))
    return finish(trials, ceiling - 1 if ceiling > low else None)


# running --------------------------------------------------------------------


@dataclass
class CardRow:
    """Every method's outcome for one setup on one card."""

    setup: Setup
    card: Card
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    peaks: dict[int, int] = field(default_factory=dict)  # peak reserved bytes of every size that fitted
    failed: list[int] = field(default_factory=list)  # every size that ran out of memory

    @property
    def non_monotonic(self) -> str | None:
        """Describe the sizes that fitted above the smallest size that ran out of memory, if any."""
        if not self.failed:
            return None
        above = sorted(size for size in self.peaks if size > self.failed[0])
        if not above:
            return None
        failed = [size for size in self.failed if size < above[-1]]
        return (
            f"memory is not monotonic in batch size: {_format_sizes(failed)} ran out of memory, "
            f"but {_format_sizes(above)} fitted"
        )


def _format_sizes(sizes: list[int], limit: int = 8) -> str:
    listed = ", ".join(str(size) for size in sizes[:limit])
    return listed + (f" and {len(sizes) - limit} more" if len(sizes) > limit else "")


def run_setup(setup: Setup, truth_mode: str, window: int) -> list[CardRow]:
    cache = TrialCache(setup)
    rows = []
    for card in setup.cards:
        log(f"{setup.label} on {card.name}")
        row = CardRow(setup, card)
        row.outcomes["planner"] = run_planner(cache, card, setup.bounds, parallel=False)
        if setup.backend == "simulated":
            row.outcomes["planner parallel"] = run_planner(cache, card, setup.bounds, parallel=True)
        row.outcomes["lightning"] = run_lightning_binsearch(cache, card, dataset_length=setup.bounds.maximum)
        row.outcomes["accelerate"] = run_accelerate(cache, card, setup.accelerate_start)
        rows.append(row)
    # The truth runs last, so that its window starts from every failure the methods saw.
    # Emulated trials compute for real, so their truth is always the window.
    mode = truth_mode if setup.backend == "simulated" else "window"
    for row in rows:
        row.outcomes["truth"] = find_truth(cache, row.card, setup.bounds, mode, window)
    for row in rows:
        mine = {size: result for (name, size), result in cache.results.items() if name == row.card.name}
        row.peaks = {
            size: result.peak_reserved_bytes
            for size, result in mine.items()
            if result.status == "fits" and result.peak_reserved_bytes is not None
        }
        row.failed = sorted(size for size, result in mine.items() if result.status == "oom")
    log(f"{setup.label}: {len({size for _, size in cache.results})} distinct sizes, {cache.wall_seconds:.0f} s of trials")
    return rows


def build_setups(quick: bool) -> list[Setup]:
    models = SIMULATED_MODELS[1:2] if quick else SIMULATED_MODELS
    card_names = ("T4", "A100-40GB") if quick else SIMULATED_CARDS
    setups = [
        Setup(
            "simulated",
            task,
            arch,
            image_size,
            precision,
            tuple(CATALOG[name] for name in card_names),
            SIMULATED_BOUNDS,
            SIMULATED_ACCELERATE_START,
        )
        for task, arch, image_size, precision in models
    ]
    emulated_cards = EMULATED_CARDS[1:] if quick else EMULATED_CARDS
    setups.append(Setup("emulated", *EMULATED_MODEL, emulated_cards, EMULATED_BOUNDS, EMULATED_ACCELERATE_START))
    return setups


# the report -----------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_unused(row: CardRow, answer: int | None) -> str:
    if answer is None or answer not in row.peaks:
        return ""
    return f" · {(row.card.budget_bytes - row.peaks[answer]) / GiB:.2f} GiB unused"


def format_cell(row: CardRow, method: str) -> str:
    outcome = row.outcomes.get(method)
    if outcome is None:
        return "–"
    truth = row.outcomes.get("truth")
    if outcome.error is not None:
        answer = "error"
    elif outcome.answer is None:
        answer = "none fits"
    else:
        answer = str(outcome.answer)
    if method == "accelerate":
        answer += format_unused(row, outcome.answer)
    elif method != "truth" and truth is not None and truth.error is None and outcome.error is None:
        answer += " ✓" if outcome.answer == truth.answer else " ✗"
    cell = f"{answer} · {outcome.trials} tr · {outcome.seconds:.0f} s"
    if method == "planner parallel":
        cell += f" · {outcome.rounds} rounds"
    if method == "truth":
        cell = f"{answer}{format_unused(row, outcome.answer)} · {outcome.trials} tr"
    if outcome.note is not None or outcome.error is not None:
        cell += " †"
    return cell


def find_findings(rows: list[CardRow]) -> list[str]:
    """List every row where the planner is wrong or needs more trials than Lightning's bisection."""
    findings = []
    for row in rows:
        where = f"{row.setup.label} on {row.card.name}"
        lightning = row.outcomes["lightning"]
        truth = row.outcomes.get("truth")
        for method in ("planner", "planner parallel"):
            outcome = row.outcomes.get(method)
            if outcome is None:
                continue
            if outcome.trials > lightning.trials:
                findings.append(
                    f"{where}: {method} ran {outcome.trials} trials, Lightning {lightning.trials} "
                    f"(planner sizes {outcome.sizes}; Lightning sizes {lightning.sizes})"
                )
            if truth is not None and truth.error is None and outcome.answer != truth.answer:
                findings.append(
                    f"{where}: {method} answered {outcome.answer}, the truth is {truth.answer} "
                    f"(planner sizes {outcome.sizes})"
                )
    return findings


def render(rows: list[CardRow], args: argparse.Namespace, started: datetime.datetime, wall_seconds: float) -> str:
    command = "python " + " ".join(shlex.quote(part) for part in sys.argv)
    if args.truth == "window":
        truth_line = (
            f"Truth: every size within {args.window} below the smallest failure any method saw, "
            "moving down on each failure. Sizes further down that no method ran are assumed to fit "
            "(`--truth exhaustive` runs every size)."
        )
    else:
        truth_line = (
            "Truth: on simulated setups every size of the range, from the smallest up to the first failure. "
            f"On emulated setups every size within {args.window} below the smallest failure any method saw."
        )
    lines = [
        f"Command: `{command}`",
        f"Date: {started.isoformat(timespec='seconds')}",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, torch.set_num_threads(1); "
        f"load average (1 min) at the end {os.getloadavg()[0]:.2f}",
        f"Software: Python {platform.python_version()}, torch {torch.__version__}, fastai {fastai.__version__}",
        f"Wall-clock time of the whole run: {wall_seconds / 60:.1f} min",
        truth_line,
        "",
        "Each cell: answer, ✓ when it equals the truth, distinct trials, and the sum of those trials' seconds. "
        f"Lightning: `BatchSizeFinder(mode=\"binsearch\")`, init_val={LIGHTNING_INIT_VAL}, "
        f"max_trials={LIGHTNING_MAX_TRIALS}, with the range's maximum as the dataset length. "
        "accelerate: `find_executable_batch_size` from the start size shown, ×0.9 after each OOM; "
        "\"unused\" is the card's budget less the peak reserved at the answer. "
        "A simulated trial's seconds are those of the whole call, one trace replayed on every card of its setup. "
        "† marks a note below the table, and ‡ a card where memory is not monotonic in batch size.",
        "",
        "| setup | card | budget | truth | planner | planner, parallel | Lightning binsearch | accelerate |",
        "|---|---|--:|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        accelerate = f"from {row.setup.accelerate_start}: {format_cell(row, 'accelerate')}"
        cells = [
            f"{row.setup.label} ({row.setup.backend}, {row.setup.bounds.minimum}..{row.setup.bounds.maximum})",
            row.card.name + (" ‡" if row.non_monotonic is not None else ""),
            f"{row.card.budget_bytes / GiB:.2f} GiB",
            format_cell(row, "truth"),
            format_cell(row, "planner"),
            format_cell(row, "planner parallel"),
            format_cell(row, "lightning"),
            accelerate,
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for method, outcome in row.outcomes.items():
            for text in (outcome.error, outcome.note):
                if text is not None:
                    notes.append(f"- † {row.setup.label} on {row.card.name}, {method}: {text}")
        if row.non_monotonic is not None:
            notes.append(f"- ‡ {row.setup.label} on {row.card.name}: {row.non_monotonic}")

    lines += [
        "",
        "| method | simulated trials | simulated seconds | emulated trials | emulated seconds "
        "| answers equal to the truth |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for method in ("planner", "planner parallel", "lightning", "accelerate"):
        cells = [method]
        for backend in ("simulated", "emulated"):
            outcomes = [row.outcomes[method] for row in rows if row.setup.backend == backend and method in row.outcomes]
            cells += [str(sum(o.trials for o in outcomes)), f"{sum(o.seconds for o in outcomes):.0f}"] if outcomes else ["–", "–"]
        judged = [row for row in rows if method in row.outcomes and row.outcomes["truth"].error is None]
        correct = sum(row.outcomes[method].answer == row.outcomes["truth"].answer for row in judged)
        cells.append(f"{correct} of {len(judged)}")
        lines.append("| " + " | ".join(cells) + " |")

    if notes:
        lines += ["", "Notes:", *notes]
    findings = find_findings(rows)
    lines += ["", "Rows where the planner is wrong or runs more trials than Lightning's bisection:"]
    lines += [f"- {finding}" for finding in findings] or ["- none"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default="bench_search.md", help="Markdown file to write the table to (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run one simulated setup (resnet18 224 px fp16) on T4 and A100-40GB and one emulated card",
    )
    parser.add_argument(
        "--truth",
        choices=("window", "exhaustive"),
        default="window",
        help="how to find the simulated truth: a window of sizes below the boundary, or every size "
        "of the range, which is hours of trials on a CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=4,
        help="sizes below the boundary that --truth window runs (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.window < 1:
        parser.error(f"--window is {args.window}, but it must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    # fastai and torchvision warn about deprecated torch APIs on every learner.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    started = datetime.datetime.now().astimezone()
    clock = time.perf_counter()
    rows: list[CardRow] = []
    for setup in build_setups(args.quick):
        rows += run_setup(setup, args.truth, args.window)
    table = render(rows, args, started, time.perf_counter() - clock)

    print(table)
    Path(args.output).write_text(table)
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
