"""Find the largest batch size (or image size) that fits a card in a few trials.

Peak memory grows nearly linearly with batch size (and with the number of
pixels, so with the square of the image size): two fitting trials predict the
boundary. The search then verifies the predicted largest size and the next
one up, and falls back to bisection where the prediction missed. It never
returns a size it did not run: the answer is always a probed size that
fitted, and every smaller probed size fitted too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from planner.cards import Card
from planner.grid import AutoRange, SearchSpec

Dimension = Literal["batch_size", "image_size", "seq_len"]

# The second size probed when only the smallest is known: far enough from it
# that the slope between the two is not dominated by the weights' fixed cost.
_FIRST_GROWTH = 8


@dataclass(frozen=True)
class Probe:
    """One probed size: the outcome of its trials (``repeats`` of them) on one card."""

    size: int
    status: str  # "fits", "oom" or "error"
    peak_bytes: int | None  # highest peak reserved (else allocated) over the repeats
    allocated_bytes: int | None = None  # highest peak allocated over the repeats, for fitting sizes
    needed_bytes: int | None = None  # for an OOM, the peak it would need, where the backend can tell
    spread_bytes: int | None = None  # highest minus lowest peak over the repeats
    trials: int = 1
    error: str | None = None


@dataclass
class SizeSearch:
    """The search state for one row (every grid value but one fixed) on one card.

    ``limit_bytes`` is what a fitting size may reserve: the card's budget
    less the headroom. A probe that fitted but reserved more counts as too
    large, the same way for every backend. ``parallel`` probes the first two
    sizes at once, for simulated cards where trials are cheap.
    """

    bounds: AutoRange
    limit_bytes: int
    dimension: Dimension = "batch_size"
    parallel: bool = False
    probes: dict[int, Probe] = field(default_factory=dict)
    error: str | None = None
    _plans: dict = field(default_factory=dict, repr=False)
    _predicted: bool = field(default=False, repr=False)
    _margin_down: int | None = field(default=None, repr=False)
    _margin_up: int | None = field(default=None, repr=False)

    # sizes ---------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.bounds.multiple_of

    def _snap_down(self, size: float) -> int:
        snapped = int(size // self.step) * self.step
        return max(self.bounds.minimum, min(snapped, self.bounds.maximum))

    def _feature(self, size: int) -> float:
        # Activations scale with the batch, the pixel count of an image and
        # the length of a sequence. NOTE: attention's scores grow with the
        # square of the length; the recurrent models planned here grow linearly.
        return float(size * size) if self.dimension == "image_size" else float(size)

    def _size_for(self, feature: float) -> float:
        return math.sqrt(max(feature, 0.0)) if self.dimension == "image_size" else feature

    # state ---------------------------------------------------------------

    def acceptable(self, probe: Probe) -> bool:
        """True when the probe fitted within the limit (its peak, if known, leaves the headroom)."""
        return probe.status == "fits" and (probe.peak_bytes is None or probe.peak_bytes <= self.limit_bytes)

    @property
    def first_failure(self) -> int | None:
        """The smallest probed size that ran out of memory or left less than the headroom."""
        failed = [
            size for size, probe in self.probes.items() if probe.status != "error" and not self.acceptable(probe)
        ]
        return min(failed) if failed else None

    @property
    def answer(self) -> int | None:
        """The largest probed size that fitted with every smaller probed size fitting too.

        None when nothing fitted, or when a trial failed with an error other than OOM.
        """
        if self.error is not None:
            return None
        ceiling = self.first_failure
        fitting = [size for size, probe in self.probes.items() if self.acceptable(probe)]
        below = [size for size in fitting if ceiling is None or size < ceiling]
        return max(below) if below else None

    @property
    def warning(self) -> str | None:
        """Say so when memory did not grow with size: a smaller size failed while a larger one fitted."""
        ceiling = self.first_failure
        if ceiling is None:
            return None
        above = sorted(size for size, probe in self.probes.items() if size > ceiling and self.acceptable(probe))
        if not above:
            return None
        return (
            f"memory does not grow with {self.dimension}: {ceiling} failed while {above[-1]} fitted; "
            f"the answer is the largest size below {ceiling}"
        )

    @property
    def done(self) -> bool:
        return not self.next_sizes()

    @property
    def trials(self) -> int:
        return sum(probe.trials for probe in self.probes.values())

    def record(self, probe: Probe) -> None:
        """Add a probe's outcome. A probe that errored (not OOM) ends the search."""
        self.probes[probe.size] = probe
        if probe.status == "error":
            self.error = probe.error or "a trial failed"

    # the next sizes ------------------------------------------------------

    def next_sizes(self) -> list[int]:
        """Return the sizes to probe next, none when the search is done.

        Calling it again without recording new probes returns the same sizes.
        """
        if self.error is not None:
            return []
        low, high, step = self.bounds.minimum, self.bounds.maximum, self.step
        if not self.probes:
            if self.parallel and high > low:
                return [low, self._snap_down(max(low + step, low * _FIRST_GROWTH))]
            return [low]
        if low in self.probes and not self.acceptable(self.probes[low]):
            return []  # nothing fits, not even the smallest size
        answer = self.answer
        ceiling = self.first_failure
        if answer is None:
            return [low] if low not in self.probes else []
        if answer >= high or (ceiling is not None and ceiling <= answer + step):
            return []
        key = (answer, ceiling)
        if key not in self._plans:
            self._plans[key] = self._plan(answer, ceiling)
        return self._plans[key]

    def _plan(self, answer: int, ceiling: int | None) -> list[int]:
        """Plan the next probes: one prediction, then a bracket around the boundary, then bisection.

        Near a card's limit the caching allocator releases cached segments and
        retries, so reserved memory flattens while allocated memory keeps
        growing in a line. One prediction from allocated memory lands close to
        the boundary. After it, probes step away from the nearest known size
        by a margin that doubles until the boundary is bracketed, then bisect.
        """
        high, step = self.bounds.maximum, self.step
        upper = min(high, ceiling - step) if ceiling is not None else high
        fitting = [size for size, probe in self.probes.items() if size <= answer and self.acceptable(probe)]
        if len(fitting) < 2 and ceiling is None:
            # One fitting size gives no slope: probe a second one well above it.
            return [self._snap_down(max(answer + step, answer * _FIRST_GROWTH))]
        if not self._predicted:
            self._predicted = True
            predicted = self._predict(answer, upper)
            if predicted is not None:
                sizes = [predicted]
                if predicted + step <= high and predicted + step != ceiling:
                    sizes.append(predicted + step)
                return [size for size in sizes if size not in self.probes] or [answer + step]

        if ceiling is None:
            # Gallop up from the answer: 4% of it, doubling while sizes fit.
            margin = self._margin_up or max(step, self._snap_down(answer * 0.04))
            self._margin_up = margin * 2
            return [min(high, self._snap_down(answer + margin) if answer + margin > answer + step else answer + step)]

        middle = self._snap_down((answer + ceiling) / 2)
        # Step down from the first failure while it is far from the answer:
        # 4% of it, doubling while sizes fail. Bisect once that passes the middle.
        margin = self._margin_down or max(step, self._snap_down(ceiling * 0.04))
        self._margin_down = margin * 2
        size = max(middle, self._snap_down(ceiling - margin))
        if size <= answer:
            size = answer + step
        return [size]

    def _predict(self, answer: int, upper: int) -> int | None:
        """Predict the largest size within the limit, linear in the feature between two fitting sizes.

        Allocated memory is linear in the feature where reserved memory is not
        (segment rounding, release under pressure), so the line goes through
        peak allocated, and the limit is lowered by the answer's reserved-
        allocated gap. Uses the smallest and largest fitting sizes.
        """
        fitting = sorted(
            (size, probe) for size, probe in self.probes.items() if size <= answer and self.acceptable(probe)
        )
        if len(fitting) < 2:
            return None
        (size_a, probe_a), (size_b, probe_b) = fitting[0], fitting[-1]

        def allocated(probe: Probe) -> int | None:
            return probe.allocated_bytes if probe.allocated_bytes is not None else probe.peak_bytes

        peak_a, peak_b = allocated(probe_a), allocated(probe_b)
        if peak_a is None or peak_b is None:
            return None
        slope = (peak_b - peak_a) / (self._feature(size_b) - self._feature(size_a))
        if slope <= 0:
            return None
        gap = (probe_b.peak_bytes - peak_b) if probe_b.peak_bytes is not None else 0
        feature = self._feature(size_b) + (self.limit_bytes - gap - peak_b) / slope
        predicted = self._snap_down(self._size_for(feature))
        return min(max(predicted, answer + self.step), upper)


@dataclass(frozen=True)
class SearchOutcome:
    """The answer of one search on one card, with how it was found."""

    search: SearchSpec
    card: Card
    backend: str
    answer: int | None  # None when nothing fits, or the search failed
    answer_peak_bytes: int | None
    limit_bytes: int  # the card's budget less the headroom
    headroom_bytes: int
    trials: int
    probes: tuple[Probe, ...]  # in size order
    warning: str | None = None
    error: str | None = None
    needed_bytes: int | None = None  # when nothing fits: what the smallest size needs, where known

    @property
    def probed_sizes(self) -> str:
        """Probed sizes with their outcome, for example ``2:fits 16:fits 300:fits 301:oom``."""
        return " ".join(f"{probe.size}:{self._label(probe)}" for probe in self.probes)

    def _label(self, probe: Probe) -> str:
        if probe.status == "fits" and probe.peak_bytes is not None and probe.peak_bytes > self.limit_bytes:
            return "over-headroom"  # fitted, but left less than the headroom free
        return probe.status

    @property
    def spread_bytes(self) -> int | None:
        """The largest spread of peak memory over repeats of one size."""
        spreads = [probe.spread_bytes for probe in self.probes if probe.spread_bytes is not None]
        return max(spreads) if spreads else None
