"""Keep finished trials safe while a plan runs, and find them again to resume.

Each finished trial is appended to a journal next to the output file
(``OUT.journal.jsonl``, one JSON row per line) the moment its result arrives.
The output file itself is rewritten atomically at most every
``flush_seconds``, and when the plan ends, however it ends. A plan killed
without warning leaves the journal; ``--resume`` reads both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from planner.output import read_results, write_results
from planner.tables import results_frame
from planner.tasks import INPUT_SIZE_KEYS

logger = logging.getLogger(__name__)

# The columns that identify a trial: its grid point and the environment it ran in.
KEY_COLUMNS = (
    "task",
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "classes",
    "train_batches",
    "valid_batches",
    "fit",
    "later_stages",
    "requested_valid_batch_size",
    "grad_accumulation",
    *INPUT_SIZE_KEYS,
    "scan_batches",
    "card",
    "card_memory_bytes",
    "backend",
    "torch_version",
    "search",
    "repeat",
)

# Statuses that are results. An "error" row (a worker that died, a timeout)
# is run again on resume.
FINAL_STATUSES = ("fits", "oom")


def journal_path(output: Path) -> Path:
    """Return the journal file that goes with ``output``."""
    return output.with_name(output.name + ".journal.jsonl")


def trial_key(row: dict[str, Any]) -> tuple:
    """Return the key that identifies a trial's grid point and environment in a result row."""
    return tuple(_plain(row.get(column)) for column in KEY_COLUMNS)


def _plain(value: Any) -> Any:
    # Values read back from Parquet or CSV come as NumPy or pandas scalars.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_previous(output: Path) -> list[dict[str, Any]]:
    """Read the rows of an earlier run from ``output`` and its journal, the journal winning on repeats."""
    rows: dict[tuple, dict[str, Any]] = {}
    if output.exists():
        for row in read_results(output).to_dict("records"):
            rows[trial_key(row)] = _clean(row)
    journal = journal_path(output)
    if journal.exists():
        with journal.open() as lines:
            for number, line in enumerate(lines, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    # The last line is cut short when the process was killed mid-write.
                    logger.warning("skipping unreadable line %d of %s", number, journal)
                    continue
                rows[trial_key(row)] = row
    return list(rows.values())


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {column: _plain(value) for column, value in row.items()}


class ResultWriter:
    """Append finished trials to a journal and keep the output file up to date."""

    def __init__(self, output: Path | None, *, previous: Iterable[dict[str, Any]] = (), flush_seconds: float = 10.0):
        self.output = output
        # Keyed by trial, so a trial run again on resume replaces its old row.
        self._rows: dict[tuple, dict[str, Any]] = {trial_key(row): row for row in previous}
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._journal = None
        if output is not None:
            self._journal = journal_path(output).open("a")

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row so far, earlier runs' included."""
        return list(self._rows.values())

    def add(self, row: dict[str, Any]) -> None:
        """Record one finished trial: journal it at once, rewrite the output now and then."""
        self._rows[trial_key(row)] = row
        if self._journal is None:
            return
        self._journal.write(json.dumps(row, default=str) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Rewrite the output file atomically with every row so far."""
        if self.output is None or not self._rows:
            return
        write_results(results_frame(self.rows), self.output)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the output file and remove the journal, whose rows it now holds."""
        self.flush()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
            if self.output is not None and self.output.exists():
                journal_path(self.output).unlink(missing_ok=True)
