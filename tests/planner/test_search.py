import warnings

import pytest
import ray

from planner import driver
from planner.cards import Card, MiB
from planner.grid import AutoRange, TrialSpec, parse_grid
from planner.search import Probe, SizeSearch
from planner.search_runner import _probe
from workers.results import TrialResult
from workers.trial import run_simulated_trial

warnings.filterwarnings("ignore", category=UserWarning)


def run_search(search: SizeSearch, memory, *, known_need: bool = False) -> SizeSearch:
    """Drive a search against a memory function of the size (bytes), as trials would report it."""
    for _ in range(100):
        sizes = search.next_sizes()
        if not sizes:
            return search
        for size in sizes:
            peak = memory(size)
            fits = peak <= search.limit_bytes
            search.record(Probe(size, "fits" if fits else "oom", peak if fits else None, peak if known_need and not fits else None))
    raise AssertionError("the search did not finish in 100 rounds")


def exhaustive(bounds: AutoRange, limit: int, memory) -> int | None:
    answer = None
    for size in range(bounds.minimum, bounds.maximum + 1, bounds.multiple_of):
        if memory(size) > limit:
            break
        answer = size
    return answer


@pytest.mark.parametrize("parallel", [False, True])
def test_search_linear_memory_answer(parallel):
    # 100 + 3 b <= 1000 gives b = 300, found from 2 and 16 and then verified at 300 and 301.
    search = run_search(SizeSearch(AutoRange(2, 4096), limit_bytes=1000, parallel=parallel), lambda b: 100 + 3 * b, known_need=parallel)
    assert search.answer == 300
    assert sorted(search.probes) == [2, 16, 300, 301]
    assert search.trials == 4


def test_search_multiple_of_and_max():
    bounds = AutoRange(8, 200, 8)
    search = run_search(SizeSearch(bounds, limit_bytes=10**9), lambda b: 100 + 3 * b)
    assert search.answer == 200  # everything fits: the answer stops at max
    assert all(size % 8 == 0 for size in search.probes)


def test_search_convex_memory_matches_exhaustive():
    # Quadratic growth makes every linear prediction overshoot; bisection must take over.
    memory = lambda b: 50 + 2 * b + 0.01 * b * b  # noqa: E731
    bounds = AutoRange(2, 4096)
    search = run_search(SizeSearch(bounds, limit_bytes=20_000), memory)
    assert search.answer == exhaustive(bounds, 20_000, memory)
    # Doubling from 2 to 2048, then bisecting 1024..2048 down to 1315, takes 21 trials.
    assert search.trials < 21


def test_search_image_size_uses_pixel_count():
    # Memory proportional to pixels: 10 + size^2 / 100 <= 1000 gives size 314, rounded down to 288 (32 x 9).
    bounds = AutoRange(32, 1024, 32)
    memory = lambda size: 10 + size * size / 100  # noqa: E731
    search = run_search(SizeSearch(bounds, limit_bytes=1000, dimension="image_size"), memory)
    assert search.answer == 288
    assert search.answer == exhaustive(bounds, 1000, memory)


def test_search_bump_reports_both_sizes():
    # Memory has a bump at 64 only: 64 fails while larger sizes fit.
    def memory(b):
        return 5000 if b == 64 else 100 + b

    search = SizeSearch(AutoRange(2, 512), limit_bytes=1000)
    search.record(Probe(2, "fits", memory(2)))
    search.record(Probe(128, "fits", memory(128)))
    search.record(Probe(64, "oom", None))
    assert search.answer == 2  # the largest probed size below the first failure
    assert search.warning == (
        "memory does not grow with batch_size: 64 failed while 128 fitted; the answer is the largest size below 64"
    )
    run_search(search, memory)
    assert search.answer == 63


def test_search_fits_nowhere():
    search = run_search(SizeSearch(AutoRange(2, 512), limit_bytes=1000), lambda b: 5000 + b)
    assert search.answer is None
    assert list(search.probes) == [2]  # one trial is enough to know


def test_search_headroom_counts_as_failure():
    # A size that fits but leaves less than the headroom is too large.
    search = SizeSearch(AutoRange(2, 512), limit_bytes=900)
    search.record(Probe(2, "fits", 950))
    assert search.answer is None
    assert search.next_sizes() == []


def test_search_error_ends_search():
    search = SizeSearch(AutoRange(2, 512), limit_bytes=900)
    search.record(Probe(2, "error", None, error="RuntimeError: boom"))
    assert search.answer is None
    assert search.error == "RuntimeError: boom"
    assert search.next_sizes() == []


def test_probe_repeats_keep_highest_peak():
    results = [
        TrialResult(status="fits", backend="emulated", peak_reserved_bytes=100 * MiB),
        TrialResult(status="fits", backend="emulated", peak_reserved_bytes=130 * MiB),
        TrialResult(status="fits", backend="emulated", peak_reserved_bytes=110 * MiB),
    ]
    probe = _probe(32, results)
    assert probe.peak_bytes == 130 * MiB
    assert probe.spread_bytes == 30 * MiB
    assert probe.trials == 3


def test_probe_repeats_any_oom_is_oom():
    results = [
        TrialResult(status="fits", backend="measured", peak_reserved_bytes=100 * MiB),
        TrialResult(status="oom", backend="measured", peak_reserved_bytes=90 * MiB),
    ]
    assert _probe(32, results).status == "oom"


# End to end, on Ray: simulated cards, whose exhaustive answer is cheap to compute.

CARDS = [("sim-300MiB", 300), ("sim-450MiB", 450), ("sim-600MiB", 600)]
BOUNDS = AutoRange(8, 256, 8)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_search_on_simulated_cards_matches_exhaustive(cluster):
    cards_yaml = "\n".join(f"  - {{name: {name}, memory: {mib}MiB, backend: simulated}}" for name, mib in CARDS)
    grid = parse_grid(
        f"""
cards:
{cards_yaml}
models:
  - task: classification
    arch: resnet18
    image_size: [48, 64]
    batch_size: {{auto: true, min: 8, max: 256, multiple_of: 8}}
"""
    )
    outcomes = []
    driver.run_grid(grid, on_search=outcomes.append)
    assert len(outcomes) == 6  # 2 rows x 3 cards

    cards = [Card(name, mib * MiB) for name, mib in CARDS]
    for size in (48, 64):
        statuses = {card.name: {} for card in cards}
        for batch in range(BOUNDS.minimum, BOUNDS.maximum + 1, BOUNDS.multiple_of):
            spec = TrialSpec("classification", "resnet18", size, batch)
            for card, result in zip(cards, run_simulated_trial(spec, cards)):
                statuses[card.name][batch] = result.status
        for card in cards:
            expected = None
            for batch, status in statuses[card.name].items():
                if status != "fits":
                    break
                expected = batch
            [outcome] = [o for o in outcomes if o.card.name == card.name and o.search.point.image_size == size]
            assert outcome.answer == expected, (card.name, size, outcome.probed_sizes)
            assert outcome.trials < len(statuses[card.name])


def test_search_fits_nowhere_reports_need(cluster):
    grid = parse_grid(
        """
cards: [{name: tiny, memory: 120MiB}]
models:
  - {task: classification, arch: resnet18, image_size: 32, batch_size: auto}
"""
    )
    outcomes = []
    driver.run_grid(grid, on_search=outcomes.append)
    [outcome] = outcomes
    assert outcome.answer is None
    assert outcome.backend == "emulated"
    # resnet18's weights, grads and Adam state alone take about 180 MiB.
    assert outcome.needed_bytes > 150 * MiB


def test_search_capped_by_dataset_size(cluster):
    grid = parse_grid(
        """
cards: [{name: roomy, memory: 8GiB, backend: simulated}]
models:
  - {task: classification, arch: resnet18, image_size: 32, batch_size: auto, dataset_size: 40}
"""
    )
    outcomes = []
    driver.run_grid(grid, on_search=outcomes.append)
    [outcome] = outcomes
    assert outcome.answer == 40
    assert outcome.search.bounds.capped_by == "dataset_size"
