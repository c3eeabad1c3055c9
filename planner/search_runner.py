"""Run the grid's searches in rounds on the plan's actors.

Each round collects the sizes every unfinished search needs next, runs them
all in parallel, and records the outcomes. A simulated grid point answers
for every simulated card at once, so simulated cards that want the same size
share one job.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from planner.cards import UNLIMITED_MEMORY_BYTES, Card
from planner.driver import Assignment, BackendChoice, Job, ResultCallback, card_backend
from planner.grid import Grid, SearchSpec
from planner.search import Probe, SearchOutcome, SizeSearch
from workers.results import TrialResult

logger = logging.getLogger(__name__)

RoundRunner = Callable[[list[Job], ResultCallback], list[tuple[Assignment, TrialResult]]]



@dataclass
class _Active:
    number: int
    spec: SearchSpec
    card: Card
    backend: str
    state: SizeSearch
    headroom_bytes: int
    needed_bytes: int | None = None


def run_searches(
    grid: Grid,
    local_cards: list[Card],
    backend: BackendChoice,
    run_round: RoundRunner,
    *,
    on_result: ResultCallback | None = None,
    on_search: Callable[[SearchOutcome], None] | None = None,
) -> list[tuple[Assignment, TrialResult]]:
    """Run every search of ``grid`` to its answer and return all probe trials."""
    actives = _start(grid, local_cards, backend)
    trials: list[tuple[Assignment, TrialResult]] = []
    probe_count = 0

    def report(item: Assignment, result: TrialResult, done: int, total: int) -> None:
        nonlocal probe_count
        probe_count += 1
        if on_result is not None:
            on_result(item, result, probe_count, 0)

    trials += _run_rounds(actives, grid.trial.repeats, run_round, report)
    _measure_needs(actives, run_round)
    for active in actives:
        if on_search is not None:
            on_search(_outcome(active))
    if grid.sizing is not None:
        # Data-parallel training adds gradient buckets to each GPU's peak. Go
        # on probing until the largest size within the smaller limit is known
        # too, so that sizing answers from a size that ran.
        reduced = _data_parallel_searches(actives)
        trials += _run_rounds(reduced, grid.trial.repeats, run_round, report)
    return trials


def _run_rounds(
    actives: list[_Active], repeats: int, run_round: RoundRunner, report: ResultCallback
) -> list[tuple[Assignment, TrialResult]]:
    trials: list[tuple[Assignment, TrialResult]] = []
    while True:
        jobs, owners = _round_jobs(actives, repeats)
        if not jobs:
            return trials
        trials += (done := run_round(jobs, report))
        _record(done, owners, actives)


def _data_parallel_searches(actives: list[_Active]) -> list[_Active]:
    """Continue each batch size search with its limit less DistributedDataParallel's gradient buckets.

    The buckets total the fp32 gradients, so the parameters' fp32 bytes (as
    ``planner.sizing`` accounts them). Each new search starts from the probes
    already run.
    """
    from planner.sizing import count_parameter_bytes

    reduced: list[_Active] = []
    for active in actives:
        if active.spec.dimension != "batch_size" or active.state.answer is None:
            continue
        point = active.spec.point
        buckets = count_parameter_bytes(point.task, point.arch, point.classes, point.image_size)
        state = SizeSearch(
            active.spec.bounds,
            limit_bytes=active.state.limit_bytes - buckets,
            dimension="batch_size",
            parallel=active.state.parallel,
        )
        for probe in active.state.probes.values():
            state.record(probe)
        reduced.append(_Active(len(reduced), active.spec, active.card, active.backend, state, active.headroom_bytes))
    return reduced


def _start(grid: Grid, local_cards: list[Card], backend: BackendChoice) -> list[_Active]:
    pairs = [(card, "measured") for card in local_cards]
    if backend != "measured":
        pairs += [(card, card_backend(card, backend)) for card in grid.cards]
    actives = []
    for spec in grid.searches:
        for card, card_choice in pairs:
            headroom = grid.headroom.bytes_for(card.memory_bytes)
            state = SizeSearch(
                spec.bounds,
                limit_bytes=card.budget_bytes - headroom,
                dimension=spec.dimension,
                parallel=card_choice == "simulated",
            )
            actives.append(_Active(len(actives), spec, card, card_choice, state, headroom))
    return actives


def _probe_spec(spec: SearchSpec, size: int):
    return dataclasses.replace(spec.point, **{spec.dimension: size})


def _round_jobs(actives: list[_Active], repeats: int) -> tuple[list[Job], dict[int, tuple[int, int]]]:
    """Build this round's jobs. ``owners`` maps an assignment index to (search number, size)."""
    jobs: list[Job] = []
    owners: dict[int, tuple[int, int]] = {}
    shared: dict[tuple[SearchSpec, int], list[Assignment]] = collections.defaultdict(list)

    def assign(active: _Active, size: int, repeat: int) -> Assignment:
        item = Assignment(
            len(owners), _probe_spec(active.spec, size), active.card, active.backend, active.spec.dimension, repeat
        )
        owners[item.index] = (active.number, size)
        return item

    for active in actives:
        for size in active.state.next_sizes():
            if active.backend == "simulated":
                # A trace is deterministic, so one run serves every repeat.
                shared[(active.spec, size)].append(assign(active, size, 0))
            else:
                for repeat in range(repeats):
                    jobs.append(Job((assign(active, size, repeat),)))
    jobs = [Job(tuple(items)) for items in shared.values()] + jobs
    return jobs, owners


def _record(
    done: list[tuple[Assignment, TrialResult]], owners: dict[int, tuple[int, int]], actives: list[_Active]
) -> None:
    grouped: dict[tuple[int, int], list[TrialResult]] = collections.defaultdict(list)
    for item, result in done:
        grouped[owners[item.index]].append(result)
    for (number, size), results in grouped.items():
        actives[number].state.record(_probe(size, results))


def _probe(size: int, results: list[TrialResult]) -> Probe:
    """Combine the repeats of one size: any OOM is an OOM, and the highest peak counts."""
    errors = [result for result in results if result.status == "error"]
    if errors:
        return Probe(size, "error", None, trials=len(results), error=errors[0].error)
    peaks = [_peak(result) for result in results if _peak(result) is not None]
    status = "oom" if any(result.status == "oom" for result in results) else "fits"
    needs = [result.needed_bytes for result in results if result.needed_bytes is not None]
    allocated = [result.peak_allocated_bytes for result in results if result.peak_allocated_bytes is not None]
    return Probe(
        size,
        status,
        max(peaks) if peaks and status == "fits" else None,
        allocated_bytes=max(allocated) if allocated and status == "fits" else None,
        needed_bytes=max(needs) if needs else None,
        spread_bytes=max(peaks) - min(peaks) if len(peaks) > 1 else None,
        trials=len(results),
    )


def _peak(result: TrialResult) -> int | None:
    if result.peak_reserved_bytes is not None:
        return result.peak_reserved_bytes
    return result.peak_allocated_bytes


def _measure_needs(actives: list[_Active], run_round: RoundRunner) -> None:
    """For emulated searches where nothing fits, run the smallest size once without a limit."""
    pending = []
    for active in actives:
        low = active.spec.bounds.minimum
        probe = active.state.probes.get(low)
        if probe is None or active.state.acceptable(probe):
            continue
        if probe.status == "fits":
            active.needed_bytes = probe.peak_bytes  # fitted, but not within the headroom
        elif probe.needed_bytes is not None:
            active.needed_bytes = probe.needed_bytes
        elif active.backend == "emulated":
            pending.append(active)
    if not pending:
        return
    jobs = []
    for active in pending:
        roomy = dataclasses.replace(active.card, name=f"{active.card.name} (no limit)", memory_bytes=UNLIMITED_MEMORY_BYTES)
        jobs.append(Job((Assignment(active.number, _probe_spec(active.spec, active.spec.bounds.minimum), roomy, "emulated"),)))
    by_number = {active.number: active for active in pending}
    for item, result in run_round(jobs, lambda *args: None):
        if result.status == "fits":
            by_number[item.index].needed_bytes = _peak(result)


def _outcome(active: _Active) -> SearchOutcome:
    state = active.state
    answer = state.answer
    probes = tuple(state.probes[size] for size in sorted(state.probes))
    return SearchOutcome(
        search=active.spec,
        card=active.card,
        backend=active.backend,
        answer=answer,
        answer_peak_bytes=state.probes[answer].peak_bytes if answer is not None else None,
        limit_bytes=state.limit_bytes,
        headroom_bytes=active.headroom_bytes,
        trials=state.trials,
        probes=probes,
        warning=state.warning,
        error=state.error,
        needed_bytes=active.needed_bytes,
    )
