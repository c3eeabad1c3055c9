"""The result of one trial, as a worker returns it to the driver."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["fits", "oom", "error"]


@dataclass(frozen=True)
class TrialResult:
    """The measurements of one trial. Byte counts are ``None`` where a backend cannot measure them."""

    status: Status
    backend: str
    oom_stage: str | None = None  # stage where memory ran out, for status "oom"
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    train_batches_run: int = 0
    valid_batches_run: int = 0
    optimizer_steps: int = 0
    valid_batch_size: int | None = None
    seconds: float = 0.0
    error: str | None = None  # exception type and message, for "oom" and "error"
    device_name: str | None = None  # the GPU a measured trial ran on
    worker_pid: int | None = None  # the actor process that ran the trial
    needed_bytes: int | None = None  # for an OOM, the peak reserved the trial would need, where known
    peak_stage: str | None = None  # stage where peak reserved memory was reached, where the backend can tell
    samples_per_second: float | None = None  # train throughput after the first batch, measured trials only
    probe_batches: str | None = None  # a learner factory's trial: the batches it fed, and how they were found

    @property
    def fits(self) -> bool | None:
        """True when the trial fitted, False on OOM, None when it could not tell."""
        return {"fits": True, "oom": False}.get(self.status)

    @property
    def batches_run(self) -> int:
        """Train and validation batches that completed."""
        return self.train_batches_run + self.valid_batches_run

    def as_row(self) -> dict[str, Any]:
        """Return the result as flat columns, with the derived ``fits`` and ``batches_run``."""
        row = asdict(self)
        row["fits"] = self.fits
        row["batches_run"] = self.batches_run
        return row
