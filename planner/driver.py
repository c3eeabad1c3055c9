"""Run a grid's trials on Ray actors and stream their results back.

The driver expands the grid into assignments (a trial spec, a card and a
backend) and groups them into jobs: a measured or emulated job is one
assignment, a simulated job is one grid point for every simulated card, since
one fake-tensor trace answers for all of them. It starts one actor per GPU
Ray finds (``num_gpus=1``, so Ray pins it) and a pool of CPU actors for
emulated and simulated cards, and feeds each actor a new job as soon as it
returns its last results.
"""

from __future__ import annotations

import collections
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import ray
from ray.exceptions import RayActorError, RayTaskError

from planner.cards import DEFAULT_OVERHEAD_BYTES, Card
from planner.grid import Grid, TrialSpec
from workers.actor import BackendName, actor_class
from workers.results import TrialResult

if TYPE_CHECKING:
    from planner.search import SearchOutcome

logger = logging.getLogger(__name__)

BackendChoice = Literal["auto", "measured", "emulated", "simulated"]
ResultCallback = Callable[["Assignment", TrialResult, int, int], None]


class PlanError(ValueError):
    """The grid cannot run on this cluster with the chosen backend (bad input, exit code 2)."""


@dataclass(frozen=True)
class Assignment:
    """One trial to run: a grid point on a card with a backend."""

    index: int
    spec: TrialSpec
    card: Card
    backend: BackendName
    search: str | None = None  # the searched dimension, for a probe of a search
    repeat: int = 0


@dataclass(frozen=True)
class Job:
    """The work of one actor call: one assignment, or one simulated grid point for several cards."""

    assignments: tuple[Assignment, ...]

    @property
    def queue(self) -> str:
        first = self.assignments[0]
        return f"measured:{first.card.name}" if first.backend == "measured" else "cpu"


@dataclass
class _Worker:
    handle: Any
    kind: Literal["gpu", "cpu"]
    card: Card | None  # the card a GPU actor measures on
    describe: dict[str, Any]
    dead: bool = False  # killed or crashed, and replaced by another worker

    @property
    def queue(self) -> str:
        return f"measured:{self.card.name}" if self.kind == "gpu" else "cpu"


def check_backend(grid: Grid, backend: BackendChoice) -> None:
    """Reject backend and card combinations that cannot run, before Ray starts."""
    if backend == "measured" and grid.cards:
        names = ", ".join(repr(card.name) for card in grid.cards)
        raise PlanError(
            f"--backend measured runs trials only on the GPUs Ray finds (the card 'local'), "
            f"but the grid also lists {names}. Use --backend auto to simulate or emulate those cards, "
            f"or list only 'local' under cards"
        )
    if backend in ("emulated", "simulated") and grid.local:
        raise PlanError(
            f"--backend {backend} cannot run the card 'local', whose memory is known only on a GPU. "
            f"Remove 'local' from cards, or use --backend auto"
        )


def card_backend(card: Card, choice: BackendChoice) -> BackendName:
    """Choose the backend for a card that is not local.

    With ``auto``, catalog cards are simulated, and inline cards use their own
    ``backend`` key or are emulated.
    """
    if choice in ("emulated", "simulated"):
        return choice
    if card.source == "catalog":
        return "simulated"
    return card.backend or "emulated"  # type: ignore[return-value]


def connect(address: str | None, *, num_cpus: int | None = None) -> None:
    """Start a local Ray cluster, or join the one at ``address``."""
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is not None:
        check_address(address)
        import planner
        import workers

        # Ship this package to the cluster's workers, so that nodes need only
        # the dependencies installed.
        options["runtime_env"] = {"py_modules": [planner, workers]}
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, **options)


def check_address(address: str, *, timeout_seconds: float = 5.0) -> None:
    """Raise ``PlanError`` within seconds when nothing listens at a Ray address.

    ``ray.init`` retries an unreachable address for a long time. "auto" and
    "local" are left to Ray, which finds its local cluster itself.
    """
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, separator, port = target.rpartition(":")
    if not separator or not port.isdigit() or not host:
        raise PlanError(
            f"--address is {address!r}, which is not a Ray address. "
            f"Use host:port (the head's GCS port, 6379 by default), ray://host:port (Ray Client, 10001) or auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_seconds):
            pass
    except OSError as error:
        raise PlanError(
            f"cannot reach the Ray cluster at {address!r}: {error.strerror or error}. "
            f"Check that the head node is running (ray start --head) and that the port is open"
        ) from None


def start_gpu_workers(count: int) -> list[_Worker]:
    """Start one actor per GPU with ``num_gpus=1`` and return each one's description of its device."""
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
    """Start ``count`` CPU actors for emulated and simulated cards."""
    cls = actor_class(num_cpus=1)
    handles = [cls.remote() for _ in range(count)]
    described = ray.get([handle.describe.remote() for handle in handles])
    return [_Worker(handle, "cpu", None, info) for handle, info in zip(handles, described)]


def plan_jobs(
    grid: Grid,
    local_cards: list[Card],
    backend: BackendChoice,
    *,
    skip: Callable[[Assignment], bool] | None = None,
) -> list[Job]:
    """Pair every grid point with every card and group the pairs into jobs.

    Assignment indices are the same for the same grid and cards, skipped or not.
    """
    pairs: list[tuple[Card, BackendName]] = [(card, "measured") for card in local_cards]
    if backend != "measured":
        pairs += [(card, card_backend(card, backend)) for card in grid.cards]

    assignments: list[Assignment] = []
    for card, card_choice in pairs:
        for spec in grid.points:
            assignments.append(Assignment(len(assignments), spec, card, card_choice))

    if skip is not None:
        assignments = [item for item in assignments if not skip(item)]
    jobs = [Job((item,)) for item in assignments if item.backend != "simulated"]
    simulated: dict[TrialSpec, list[Assignment]] = collections.defaultdict(list)
    for item in assignments:
        if item.backend == "simulated":
            simulated[item.spec].append(item)
    # Simulated jobs are cheap: run them first, so their results come early.
    return [Job(tuple(items)) for items in simulated.values()] + jobs


def run_grid(
    grid: Grid,
    *,
    backend: BackendChoice = "auto",
    address: str | None = None,
    max_cpu_workers: int | None = None,
    require_local: bool = True,
    on_result: ResultCallback | None = None,
    skip: Callable[[Assignment], bool] | None = None,
    on_search: Callable[[SearchOutcome], None] | None = None,
) -> list[tuple[Assignment, TrialResult]]:
    """Run every trial of ``grid`` and return (assignment, result) pairs in finishing order.

    With ``require_local`` False, a grid that lists 'local' runs on its other
    cards when Ray finds no usable GPU, instead of raising ``PlanError``.
    Assignments for which ``skip`` returns True are not run (resuming a plan).
    A job that runs past ``grid.trial.timeout_seconds`` is stopped: its actor
    is killed and replaced, and its trials get an ``error`` result. The
    grid's searches run after its fixed trials, on the same actors, and
    ``on_search`` receives each one's outcome; their probes go to ``on_result``
    and the returned pairs like any trial.
    """
    check_backend(grid, backend)
    connect(address)

    gpu_count = int(ray.cluster_resources().get("GPU", 0))
    wants_local = grid.local or backend == "measured"
    started = start_gpu_workers(gpu_count) if gpu_count and wants_local else []
    try:
        usable = _usable_gpu_workers(started)
        if wants_local and not usable:
            if require_local or backend == "measured" or not grid.cards:
                raise PlanError(
                    "the grid lists the card 'local', but Ray found no usable CUDA GPU. "
                    "Run on a GPU machine or cluster, or replace 'local' with catalog or inline cards"
                )
            logger.info("no usable CUDA GPU found: the card 'local' is skipped")
        local_cards = list({worker.card.name: worker.card for worker in usable}.values())
        jobs = plan_jobs(grid, local_cards, backend, skip=skip)

        cpu_jobs = sum(1 for job in jobs if job.queue == "cpu")
        if grid.searches and (backend != "measured" and grid.cards):
            cpu_jobs += len(grid.searches) * len(grid.cards)
        if cpu_jobs:
            available = int(ray.available_resources().get("CPU", 1))
            count = max(1, min(available, cpu_jobs, max_cpu_workers or available))
            started += start_cpu_workers(count)
        results = _run_queue(jobs, _live_workers(started), on_result, started, timeout_seconds=grid.trial.timeout_seconds)
        if grid.searches:
            from planner.search_runner import run_searches

            def run_round(round_jobs: list[Job], callback: ResultCallback) -> list[tuple[Assignment, TrialResult]]:
                return _run_queue(
                    round_jobs, _live_workers(started), callback, started, timeout_seconds=grid.trial.timeout_seconds
                )

            results += run_searches(grid, local_cards, backend, run_round, on_result=on_result, on_search=on_search)
        return results
    finally:
        # Free the actors' resources for the next plan on the same cluster;
        # ``started`` includes replacements for actors that died.
        for worker in started:
            ray.kill(worker.handle)


def _live_workers(started: list[_Worker]) -> list[_Worker]:
    """Return the workers that can take jobs: CPU actors and GPU actors with a CUDA device, none dead."""
    return [worker for worker in started if (worker.card or worker.kind == "cpu") and not worker.dead]


def _usable_gpu_workers(workers: list[_Worker]) -> list[_Worker]:
    for worker in workers:
        if worker.card is None:
            logger.warning(
                "Ray lists GPU %s (accelerator type %s) on node %s, but torch sees no CUDA device there: "
                "no trials run on it",
                ",".join(worker.describe["gpu_ids"]),
                worker.describe.get("accelerator_type") or "not declared",
                worker.describe["node_id"],
            )
    return [worker for worker in workers if worker.card is not None]


def _run_queue(
    jobs: list[Job],
    workers: list[_Worker],
    on_result: ResultCallback | None,
    started: list[_Worker],
    *,
    timeout_seconds: float | None = None,
) -> list[tuple[Assignment, TrialResult]]:
    """Feed jobs to workers as a work queue. Replacement workers are appended to ``started``."""
    queues: dict[str, collections.deque[Job]] = collections.defaultdict(collections.deque)
    for job in jobs:
        queues[job.queue].append(job)

    in_flight: dict[Any, tuple[_Worker, Job, float]] = {}
    results: list[tuple[Assignment, TrialResult]] = []
    total = sum(len(job.assignments) for job in jobs)

    def feed(worker: _Worker) -> None:
        if queues[worker.queue]:
            job = queues[worker.queue].popleft()
            in_flight[worker.handle.run_job.remote(job.assignments)] = (worker, job, time.monotonic())

    def finish(job: Job, job_results: list[TrialResult]) -> None:
        for item, result in zip(job.assignments, job_results):
            results.append((item, result))
            if on_result is not None:
                on_result(item, result, len(results), total)

    for worker in workers:
        feed(worker)

    while in_flight:
        wait = None
        if timeout_seconds is not None:
            oldest = min(begun for _, _, begun in in_flight.values())
            wait = max(0.0, oldest + timeout_seconds - time.monotonic())
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=wait)
        if not ready:
            ref = min(in_flight, key=lambda key: in_flight[key][2])
            worker, job, _ = in_flight.pop(ref)
            logger.warning("a job on worker process %s ran past %.0f s; stopping it", worker.describe.get("pid"), timeout_seconds)
            ray.kill(worker.handle)
            worker.dead = True
            message = f"timed out after {timeout_seconds:g} s (trial.timeout_seconds); the worker was stopped"
            finish(job, [_error_result(item, message) for item in job.assignments])
            worker = _replace(worker)
            started.append(worker)
            feed(worker)
            continue

        [ref] = ready
        worker, job, _ = in_flight.pop(ref)
        try:
            job_results = ray.get(ref)
        except RayActorError as error:
            job_results = [_error_result(item, f"worker process died: {_first_line(error)}") for item in job.assignments]
            worker.dead = True
            worker = _replace(worker)
            started.append(worker)
        except RayTaskError as error:
            job_results = [_error_result(item, f"{type(error).__name__}: {_first_line(error)}") for item in job.assignments]
        finish(job, job_results)
        feed(worker)
    return results


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _error_result(item: Assignment, message: str) -> TrialResult:
    return TrialResult(status="error", backend=item.backend, error=message)


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
