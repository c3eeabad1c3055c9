"""Aggregate trial results into a long table and per-card views."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from planner.cards import GiB
from planner.driver import Assignment
from workers.results import TrialResult

# The long table's columns, in order: grid point, card, outcome, then details.
COLUMNS = [
    "task",
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "card",
    "card_memory_bytes",
    "backend",
    "fits",
    "oom_stage",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "batches_run",
    "seconds",
    "error",
    "status",
    "classes",
    "train_batches",
    "valid_batches",
    "train_batches_run",
    "valid_batches_run",
    "optimizer_steps",
    "valid_batch_size",
    "card_overhead_bytes",
    "device_name",
    "worker_pid",
    "torch_version",
    "entry",
    "trial",
]

_INT_COLUMNS = [
    "image_size",
    "batch_size",
    "card_memory_bytes",
    "peak_allocated_bytes",
    "peak_reserved_bytes",
    "batches_run",
    "classes",
    "train_batches",
    "valid_batches",
    "train_batches_run",
    "valid_batches_run",
    "optimizer_steps",
    "valid_batch_size",
    "card_overhead_bytes",
    "worker_pid",
    "entry",
    "trial",
]
_STRING_COLUMNS = ["task", "arch", "precision", "card", "backend", "oom_stage", "error", "status", "device_name", "torch_version"]

ROW_KEYS = ["task", "arch", "image_size", "precision"]


def result_row(assignment: Assignment, result: TrialResult, *, torch_version: str) -> dict[str, Any]:
    """Flatten one trial into a row of the long table."""
    row = assignment.spec.as_row()
    row.update(result.as_row())
    row.update(
        card=assignment.card.name,
        card_memory_bytes=assignment.card.memory_bytes,
        card_overhead_bytes=assignment.card.overhead_bytes,
        torch_version=torch_version,
        trial=assignment.index,
    )
    return row


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Build the long table, one row per trial, with stable column order and nullable dtypes."""
    frame = pd.DataFrame(list(rows))
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[COLUMNS]
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    for column in _STRING_COLUMNS:
        frame[column] = frame[column].astype("string")
    frame["fits"] = frame["fits"].astype("boolean")
    frame["seconds"] = frame["seconds"].astype("float64")
    return frame.sort_values(["card", *ROW_KEYS, "batch_size"], kind="stable").reset_index(drop=True)


def _cell(row: pd.Series) -> str:
    if row["status"] == "oom":
        return "OOM"
    if row["status"] != "fits":
        return "ERR"
    peak = row["peak_reserved_bytes"]
    if pd.isna(peak):
        peak = row["peak_allocated_bytes"]
    return f"{peak / GiB:.2f}"


def card_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Return one table per card: rows are task/arch/image size/precision, columns batch sizes.

    Cells hold peak memory in GiB (peak reserved where the backend measures
    it, else peak allocated), ``OOM`` or ``ERR``. The last column is the
    largest batch size that fitted in each row.
    """
    tables: dict[str, pd.DataFrame] = {}
    # Cards in the order the grid lists them, which is the order of trial ids.
    order = frame.groupby("card")["trial"].min().sort_values().index
    for card in order:
        group = frame[frame["card"] == card]
        cells = group.assign(cell=group.apply(_cell, axis=1))
        table = cells.pivot_table(index=ROW_KEYS, columns="batch_size", values="cell", aggfunc="first")
        table = table.reindex(sorted(table.columns), axis=1).fillna("")
        table.columns = [str(column) for column in table.columns]
        fitting = group[group["status"] == "fits"].groupby(ROW_KEYS)["batch_size"].max()
        table["max fitting batch size"] = fitting.reindex(table.index).astype("Int64").astype("string").fillna("none")
        tables[str(card)] = table
    return tables
