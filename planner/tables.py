"""Aggregate trial results into a long table and per-card views."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from planner.cards import GiB, MiB
from planner.grid import Headroom
from planner.search import SearchOutcome
from planner.tasks import INPUT_SIZE_KEYS
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
    "samples_per_second",
    "classes",
    "fit",
    "later_stages",
    "grad_accumulation",
    "effective_batch_size",
    "requested_valid_batch_size",
    *INPUT_SIZE_KEYS,
    "probe_batches",
    "peak_stage",
    "train_batches",
    "valid_batches",
    "train_batches_run",
    "valid_batches_run",
    "optimizer_steps",
    "valid_batch_size",
    "scan_batches",
    "card_overhead_bytes",
    "device_name",
    "worker_pid",
    "needed_bytes",
    "search",
    "repeat",
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
    "grad_accumulation",
    "effective_batch_size",
    "requested_valid_batch_size",
    "seq_len",
    "vocab_size",
    "n_cont",
    "n_cat",
    "cardinality",
    "scan_batches",
    "train_batches",
    "valid_batches",
    "train_batches_run",
    "valid_batches_run",
    "optimizer_steps",
    "valid_batch_size",
    "card_overhead_bytes",
    "worker_pid",
    "needed_bytes",
    "repeat",
    "entry",
    "trial",
]
_STRING_COLUMNS = [
    "task",
    "arch",
    "precision",
    "card",
    "backend",
    "oom_stage",
    "error",
    "status",
    "device_name",
    "search",
    "fit",
    "later_stages",
    "peak_stage",
    "torch_version",
    "layers",
    "params",
    "probe_batches",
]

ROW_KEYS = ["task", "arch", "image_size", "precision"]
# Shown only when a card's rows use them: most grids have one fit, no stages
# and no accumulation.
OPTIONAL_ROW_KEYS = {"fit": "fit_one_cycle", "later_stages": "", "grad_accumulation": 1}
# The size of a row's inputs: shown when any row of the card has one. Text,
# tabular and learner-factory rows have no image size.
SIZE_ROW_KEYS = ["image_size", *INPUT_SIZE_KEYS]


def _row_keys(frame: pd.DataFrame) -> list[str]:
    keys = ROW_KEYS[:2]
    for key, default in OPTIONAL_ROW_KEYS.items():
        if key in frame and (frame[key].fillna(default) != default).any():
            keys.append(key)
    keys += [key for key in SIZE_ROW_KEYS if key in frame and frame[key].notna().any()]
    return keys + ["precision"]


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
        search=assignment.search,
        repeat=assignment.repeat,
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
    frame["samples_per_second"] = frame["samples_per_second"].astype("float64")
    order = ["card", "task", "arch", "image_size", "seq_len", "n_cont", "n_cat", "precision", "batch_size"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def cell_unit(frame: pd.DataFrame) -> tuple[str, int]:
    """Return the unit of a card table's cells: MiB when every listed trial's peak is below 1 GiB, else GiB.

    Small models (tables, small text models) would otherwise read 0.00 everywhere.
    """
    listed = frame[frame["search"].isna()]
    peaks = listed["peak_reserved_bytes"].fillna(listed["peak_allocated_bytes"]).dropna()
    if len(peaks) and peaks.max() < GiB:
        return "MiB", MiB
    return "GiB", GiB


def _cell(row: pd.Series, unit_bytes: int) -> str:
    if row["status"] == "oom":
        return "OOM"
    if row["status"] != "fits":
        return "ERR"
    peak = row["peak_reserved_bytes"]
    if pd.isna(peak):
        peak = row["peak_allocated_bytes"]
    return f"{peak / unit_bytes:.2f}" if unit_bytes == GiB else f"{peak / unit_bytes:.0f}"


def _within_headroom(frame: pd.DataFrame, headroom: Headroom) -> pd.Series:
    """True for trials that fitted and left the headroom free on their card."""
    peak = frame["peak_reserved_bytes"].fillna(frame["peak_allocated_bytes"])
    budget = frame["card_memory_bytes"] - frame["card_overhead_bytes"]
    spare = budget - peak
    needed = frame["card_memory_bytes"].map(headroom.bytes_for)
    return (frame["status"] == "fits") & (spare >= needed).fillna(True)


def card_tables(frame: pd.DataFrame, *, headroom: Headroom = Headroom()) -> dict[str, pd.DataFrame]:
    """Return one table per card: rows are task/arch/image size/precision, columns batch sizes.

    Cells hold peak memory in the unit ``cell_unit`` picks for the card (peak
    reserved where the backend measures it, else peak allocated), ``OOM`` or ``ERR``. The last column is the
    largest batch size that fitted in each row and left ``headroom`` free.
    Search probes are left out: ``search_tables`` shows their answers.
    """
    tables: dict[str, pd.DataFrame] = {}
    frame = frame[frame["search"].isna()]
    # Cards in the order the grid lists them, which is the order of trial ids.
    order = frame.groupby("card")["trial"].min().sort_values().index
    for card in order:
        group = frame[frame["card"] == card]
        keys = _row_keys(group)
        # pivot_table drops rows whose keys are missing: fill them.
        group = group.assign(**{key: group[key].fillna(OPTIONAL_ROW_KEYS[key]) for key in OPTIONAL_ROW_KEYS})
        _, unit_bytes = cell_unit(group)
        cells = group.assign(cell=group.apply(_cell, axis=1, unit_bytes=unit_bytes))
        # Size keys a row does not use are missing: keep those rows (dropna=False).
        table = cells.groupby([*keys, "batch_size"], dropna=False)["cell"].first().unstack("batch_size")
        table = table.reindex(sorted(table.columns), axis=1).fillna("")
        table.columns = [str(column) for column in table.columns]
        fitting = group[_within_headroom(group, headroom)].groupby(keys, dropna=False)["batch_size"].max()
        table["max fitting batch size"] = fitting.reindex(table.index).astype("Int64").astype("string").fillna("none")
        if table.index.nlevels > 1:
            # A key a row does not use shows as an empty cell.
            table.index = pd.MultiIndex.from_tuples(
                [tuple("" if pd.isna(value) else value for value in key) for key in table.index], names=keys
            )
        tables[str(card)] = table
    return tables


SEARCH_COLUMNS = [
    "task",
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "classes",
    *INPUT_SIZE_KEYS,
    "card",
    "card_memory_bytes",
    "backend",
    "searched",
    "fixed",
    "answer",
    "answer_peak_bytes",
    "headroom_bytes",
    "limit_bytes",
    "search_trials",
    "probed_sizes",
    "fits_nowhere",
    "needed_bytes",
    "spread_bytes",
    "warning",
    "error",
    "search_min",
    "search_max",
    "search_multiple_of",
    "capped_by",
]


def search_frame(outcomes: Iterable[SearchOutcome]) -> pd.DataFrame:
    """Build the table of search answers, one row per searched row and card."""
    rows = []
    for outcome in outcomes:
        point = outcome.search.point
        searched = outcome.search.dimension
        bounds = outcome.search.bounds
        row = {
            "task": point.task,
            "arch": point.arch,
            "image_size": point.image_size,
            "batch_size": point.batch_size,
            "precision": point.precision,
            "classes": point.classes,
            "card": outcome.card.name,
            "card_memory_bytes": outcome.card.memory_bytes,
            "backend": outcome.backend,
            "searched": searched,
            "answer": outcome.answer,
            "answer_peak_bytes": outcome.answer_peak_bytes,
            "headroom_bytes": outcome.headroom_bytes,
            "limit_bytes": outcome.limit_bytes,
            "search_trials": outcome.trials,
            "probed_sizes": outcome.probed_sizes,
            "fits_nowhere": outcome.answer is None and outcome.error is None,
            "needed_bytes": outcome.needed_bytes,
            "spread_bytes": outcome.spread_bytes,
            "warning": outcome.warning,
            "error": outcome.error,
            "search_min": bounds.minimum,
            "search_max": bounds.maximum,
            "search_multiple_of": bounds.multiple_of,
            "capped_by": bounds.capped_by,
            "fixed": ", ".join(
                [
                    f"{key}={value}"
                    for key, value in {"batch_size": point.batch_size, **point.size_fields()}.items()
                    if key not in (searched, "params")
                ]
                + [f"{key}={value}" for key, value in point.params]
            ),
        }
        row.update(point.size_fields())
        row[searched] = None  # the searched value is the answer
        rows.append(row)
    frame = pd.DataFrame(rows, columns=SEARCH_COLUMNS)
    for column in ("image_size", "batch_size", "classes", "seq_len", "vocab_size", "n_cont", "n_cat", "cardinality",
                   "card_memory_bytes", "answer", "answer_peak_bytes",
                   "headroom_bytes", "limit_bytes", "search_trials", "needed_bytes", "spread_bytes",
                   "search_min", "search_max", "search_multiple_of"):
        frame[column] = frame[column].astype("Int64")
    for column in ("task", "arch", "precision", "card", "backend", "searched", "probed_sizes", "warning", "error",
                   "capped_by", "layers", "params", "fixed"):
        frame[column] = frame[column].astype("string")
    frame["fits_nowhere"] = frame["fits_nowhere"].astype("boolean")
    return frame


def _answer_cell(row: pd.Series) -> str:
    if pd.notna(row["error"]):
        return "ERR"
    if row["fits_nowhere"]:
        if pd.notna(row["needed_bytes"]):
            return f"none (needs {row['needed_bytes'] / GiB:.2f} GiB)"
        return "none"
    answer = str(row["answer"])
    if pd.notna(row["capped_by"]) and row["answer"] == row["search_max"]:
        answer += " (dataset size)"
    elif row["answer"] == row["search_max"]:
        answer += " (max)"
    if pd.notna(row["warning"]):
        answer += " !"
    return answer


def search_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Return one table per card with each searched row's answer, its peak and the trials it took."""
    tables: dict[str, pd.DataFrame] = {}
    for card in frame["card"].unique():
        group = frame[frame["card"] == card]
        table = pd.DataFrame(
            {
                "task": group["task"],
                "arch": group["arch"],
                "fixed": group["fixed"],
                "precision": group["precision"],
                "searched": group["searched"],
                "largest that fits": group.apply(_answer_cell, axis=1),
                "peak GiB": [
                    f"{peak / GiB:.2f}" if pd.notna(peak) else "-" for peak in group["answer_peak_bytes"]
                ],
                "trials": group["search_trials"],
                "probed": group["probed_sizes"],
            }
        ).set_index(["task", "arch", "fixed", "precision"])
        tables[str(card)] = table
    return tables
