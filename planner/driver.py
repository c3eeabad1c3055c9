"""Run a grid's trials on Ray actors and stream their results back.

The driver expands the grid into assignments (a trial spec, a card and a
backend), starts one actor per GPU Ray finds (``num_gpus=1``, so Ray pins it)
and a pool of CPU actors for emulated cards, and feeds each actor a new
assignment as soon as it returns its last result.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import ray
from ray.exceptions import RayActorError, RayTaskError

from planner.cards import Card, DEFAULT_OVERHEAD_BYTES
from planner.grid import Grid, TrialSpec
from workers.actor import BackendName, actor_class
from workers.results import TrialResult

logger = logging.getLogger(__name__)

BackendChoice = Literal["auto", "measured", "emulated"]


class PlanError(ValueError):
    """The grid cannot run on this cluster with the chosen backend (bad input, exit code 2)."""


@dataclass(frozen=True)
class Assignment:
    """One trial to run: a grid point on a card with a backend."""

    index: int
    spec: TrialSpec
    card: Card
    backend: BackendName


@dataclass
class _Worker:
    handle: Any
    kind: Literal["gpu", "cpu"]
    card: Card | None  # the card a GPU actor measures on
    describe: dict[str, Any]


def check_backend(grid: Grid, backend: BackendChoice) -> None:
    """Reject backend and card combinations that cannot run, before Ray starts."""
    if backend == "measured" and grid.cards:
        names = ", ".join(repr(card.name) for card in grid.cards)
        raise PlanError(
            f"--backend measured runs trials only on the GPUs Ray finds (the card 'local'), "
            f"but the grid also lists {names}. Use --backend auto to emulate those cards, "
            f"or list only 'local' under cards"
        )
    if backend == "emulated" and grid.local:
        raise PlanError(
            "--backend emulated cannot emulate the card 'local', whose memory is known only on a GPU. "
            "Remove 'local' from cards, or use --backend auto"
        )


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster, or join the one at ``address``."""
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is not None:
        import planner
        import workers

        # Ship this package to the cluster's workers, so that nodes need only
        # the dependencies installed.
        options["runtime_env"] = {"py_modules": [planner, workers]}
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, **options)


def start_gpu_workers(count: int) -> list[_Worker]:
    """Start one actor per GPU with ``num_gpus=1`` and report what each one sees."""
    cls = actor_class(num_gpus=1, num_cpus=0)
    handles = [cls.remote() for _ in range(count)]
    described = ray.get([handle.describe.remote() for handle in handles])
    workers = []
    for handle, info in zip(handles, described):
        card = None
        if info["cuda_available"]:
            card = Card(info["device_name"], info["memory_bytes"], DEFAULT_OVERHEAD_BYTES, "local")
        workers.append(_Worker(handle, "gpu", card, info))
    return workers


def start_cpu_workers(count: int) -> list[_Worker]:
    """Start ``count`` CPU actors for emulated cards."""
    cls = actor_class(num_cpus=1)
    handles = [cls.remote() for _ in range(count)]
    described = ray.get([handle.describe.remote() for handle in handles])
    return [_Worker(handle, "cpu", None, info) for handle, info in zip(handles, described)]


def plan_assignments(grid: Grid, local_cards: Iterable[Card], backend: BackendChoice) -> list[Assignment]:
    """Pair every grid point with every card, measured on local cards and emulated elsewhere."""
    pairs: list[tuple[Card, BackendName]] = [(card, "measured") for card in local_cards]
    if backend != "measured":
        pairs += [(card, "emulated") for card in grid.cards]
    assignments = []
    for card, card_backend in pairs:
        for spec in grid.points:
            assignments.append(Assignment(len(assignments), spec, card, card_backend))
    return assignments


def run_grid(
    grid: Grid,
    *,
    backend: BackendChoice = "auto",
    address: str | None = None,
    max_cpu_workers: int | None = None,
    require_local: bool = True,
    on_result: Callable[[Assignment, TrialResult, int, int], None] | None = None,
) -> list[tuple[Assignment, TrialResult]]:
    """Run every trial of ``grid`` and return (assignment, result) pairs in finishing order.

    With ``require_local`` False, a grid that lists 'local' runs on its other
    cards when Ray finds no usable GPU, instead of raising ``PlanError``.
    """
    check_backend(grid, backend)
    connect(address)

    gpu_count = int(ray.cluster_resources().get("GPU", 0))
    started = start_gpu_workers(gpu_count) if gpu_count and backend != "emulated" else []
    try:
        usable = _usable_gpu_workers(started)
        wants_local = grid.local or backend == "measured"
        if wants_local and not usable:
            if require_local or backend == "measured" or not grid.cards:
                raise PlanError(
                    "the grid lists the card 'local', but Ray found no usable CUDA GPU. "
                    "Run on a GPU machine or cluster, or replace 'local' with catalog or inline cards"
                )
            logger.info("no usable CUDA GPU found: the card 'local' is skipped")
        local_cards = list({worker.card.name: worker.card for worker in usable}.values()) if wants_local else []
        assignments = plan_assignments(grid, local_cards, backend)

        cpu_workers: list[_Worker] = []
        emulated = sum(1 for item in assignments if item.backend == "emulated")
        if emulated:
            available = int(ray.available_resources().get("CPU", 1))
            count = max(1, min(available, emulated, max_cpu_workers or available))
            cpu_workers = start_cpu_workers(count)
            started += cpu_workers
        return _run_queue(assignments, usable if local_cards else [], cpu_workers, on_result, started)
    finally:
        # Free the actors' resources for the next plan on the same cluster;
        # ``started`` includes replacements for actors that died.
        for worker in started:
            ray.kill(worker.handle)


def _usable_gpu_workers(workers: list[_Worker]) -> list[_Worker]:
    for worker in workers:
        if worker.card is None:
            logger.warning(
                "Ray lists GPU %s on host %s, but torch sees no CUDA device there: no trials run on it",
                ",".join(worker.describe["gpu_ids"]),
                worker.describe["host"],
            )
    return [worker for worker in workers if worker.card is not None]


def _run_queue(
    assignments: list[Assignment],
    gpu_workers: list[_Worker],
    cpu_workers: list[_Worker],
    on_result: Callable[[Assignment, TrialResult, int, int], None] | None,
    started: list[_Worker],
) -> list[tuple[Assignment, TrialResult]]:
    """Feed assignments to workers as a work queue. Replacement workers are appended to ``started``."""
    # One queue per local card for measured trials, one shared queue for emulated ones.
    queues: dict[str, collections.deque[Assignment]] = collections.defaultdict(collections.deque)
    for item in assignments:
        queues[_queue_key(item)].append(item)

    in_flight: dict[Any, tuple[_Worker, Assignment]] = {}
    results: list[tuple[Assignment, TrialResult]] = []
    total = len(assignments)

    def feed(worker: _Worker) -> None:
        key = f"measured:{worker.card.name}" if worker.kind == "gpu" else "emulated"
        if queues[key]:
            item = queues[key].popleft()
            ref = worker.handle.run.remote(item.spec, item.card, item.backend)
            in_flight[ref] = (worker, item)

    for worker in gpu_workers + cpu_workers:
        feed(worker)

    while in_flight:
        [ref], _ = ray.wait(list(in_flight), num_returns=1)
        worker, item = in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except RayActorError as error:
            result = TrialResult(status="error", backend=item.backend, error=f"worker process died: {error}")
            worker = _replace(worker)
            started.append(worker)
        except RayTaskError as error:
            result = TrialResult(status="error", backend=item.backend, error=f"{type(error).__name__}: {error}")
        results.append((item, result))
        if on_result is not None:
            on_result(item, result, len(results), total)
        feed(worker)
    return results


def _queue_key(item: Assignment) -> str:
    return f"measured:{item.card.name}" if item.backend == "measured" else "emulated"


def _replace(worker: _Worker) -> _Worker:
    """Start a new actor in place of one whose process died."""
    logger.warning("worker process %s died; starting a replacement", worker.describe.get("pid"))
    if worker.kind == "gpu":
        [new] = start_gpu_workers(1)
    else:
        [new] = start_cpu_workers(1)
    return new


def shutdown() -> None:
    """Disconnect from Ray, stopping the local cluster if this process started it."""
    if ray.is_initialized():
        ray.shutdown()
