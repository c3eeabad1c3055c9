"""Tests for the output file: path checks, CSV and Parquet round trips, and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow
import pytest

from planner.cards import CATALOG, Card
from planner.driver import Assignment
from planner.grid import TrialSpec
from planner.output import OutputError, check_output_path, read_results, write_results
from planner.tables import COLUMNS, result_row, results_frame
from workers.results import TrialResult

SMALL_CARD = Card("emu-512MiB", 512 * 2**20, 0, "inline")
TORCH_VERSION = "2.9.1+cu128"


def make_row(index: int, spec: TrialSpec, card: Card, result: TrialResult) -> dict[str, Any]:
    """Return one row of the long table, as the driver builds it."""
    backend = "measured" if card.source == "catalog" else "emulated"
    return result_row(Assignment(index, spec, card, backend), result, torch_version=TORCH_VERSION)


def mixed_rows() -> list[dict[str, Any]]:
    """Return rows with each status: fits, oom and error, and byte counts left as None."""
    spec = TrialSpec("classification", "resnet18", 64, 16, "fp16", 10, 2, 1, 0)
    segmentation = TrialSpec("segmentation", "resnet34", 128, 4, "fp32", 4, 2, 1, 1)
    fits = TrialResult(
        status="fits",
        backend="measured",
        peak_allocated_bytes=1_234_567_890,
        peak_reserved_bytes=1_610_612_736,
        train_batches_run=2,
        valid_batches_run=1,
        optimizer_steps=2,
        valid_batch_size=32,
        seconds=3.141592653589793,
        device_name="NVIDIA A100-SXM4-40GB",
    )
    oom = TrialResult(
        status="oom",
        backend="emulated",
        oom_stage="backward",
        peak_allocated_bytes=None,
        peak_reserved_bytes=None,
        train_batches_run=1,
        seconds=0.5,
        error="OutOfMemoryError: emulated card has 512.00 MiB, a trial needed more",
    )
    error = TrialResult(
        status="error",
        backend="emulated",
        seconds=0.25,
        # A comma and a newline, which CSV must quote.
        error='RuntimeError: shape mismatch, got [4, 3]\nexpected "[4, 4]"',
    )
    return [
        make_row(0, spec, CATALOG["A100-40GB"], fits),
        make_row(1, spec, SMALL_CARD, oom),
        make_row(2, segmentation, SMALL_CARD, error),
    ]


def write_and_read(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Write ``frame`` to ``path`` and return what reading it back gives."""
    write_results(frame, path)
    return read_results(path)


# check_output_path.


def test_check_accepts_csv(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"

    assert check_output_path(path) == path


def test_check_accepts_upper_case(tmp_path: Path) -> None:
    path = tmp_path / "results.PARQUET"

    assert check_output_path(str(path)) == path


def test_check_accepts_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert check_output_path("results.csv") == Path("results.csv")


def test_check_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "results.txt"

    with pytest.raises(OutputError) as info:
        check_output_path(path)

    assert str(info.value) == f"output file {str(path)!r} has the extension '.txt'. Use .csv or .parquet"


def test_check_no_extension(tmp_path: Path) -> None:
    path = tmp_path / "results"

    with pytest.raises(OutputError) as info:
        check_output_path(path)

    assert str(info.value) == f"output file {str(path)!r} has the extension '(none)'. Use .csv or .parquet"


def test_check_missing_folder(tmp_path: Path) -> None:
    folder = tmp_path / "missing"

    with pytest.raises(OutputError) as info:
        check_output_path(folder / "results.csv")

    assert str(info.value) == f"output folder {str(folder)!r} does not exist. Create it or choose another path"


def test_check_path_is_folder(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.mkdir()

    with pytest.raises(OutputError) as info:
        check_output_path(path)

    assert str(info.value) == (
        f"output path {str(path)!r} is a folder. Give a file name ending in .csv or .parquet"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_check_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError) as info:
            check_output_path(folder / "results.csv")
    finally:
        folder.chmod(0o755)

    assert str(info.value) == f"output folder {str(folder)!r} is not writable. Choose another path"


# Round trips.


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_mixed(tmp_path: Path, suffix: str) -> None:
    frame = results_frame(mixed_rows())

    read = write_and_read(frame, tmp_path / f"results{suffix}")

    pd.testing.assert_frame_equal(read, frame)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_dtypes(tmp_path: Path, suffix: str) -> None:
    read = write_and_read(results_frame(mixed_rows()), tmp_path / f"results{suffix}")

    assert list(read.columns) == COLUMNS
    assert read["peak_reserved_bytes"].dtype == "Int64"
    assert read["fits"].dtype == "boolean"
    assert read["error"].dtype == "string"
    assert read["seconds"].dtype == "float64"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_missing_values(tmp_path: Path, suffix: str) -> None:
    read = write_and_read(results_frame(mixed_rows()), tmp_path / f"results{suffix}")
    error_row = read[read["status"] == "error"].iloc[0]

    # An error row has no fits value, no peak and no OOM stage.
    assert error_row["fits"] is pd.NA
    assert error_row["peak_allocated_bytes"] is pd.NA
    assert error_row["oom_stage"] is pd.NA
    assert error_row["error"] == 'RuntimeError: shape mismatch, got [4, 3]\nexpected "[4, 4]"'


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_empty_columns(tmp_path: Path, suffix: str) -> None:
    # One fitting emulated trial leaves oom_stage, error, device_name and the
    # reserved peak empty in every row, so CSV reads those columns as all-missing.
    spec = TrialSpec("classification", "resnet18", 32, 8)
    result = TrialResult("fits", "emulated", peak_allocated_bytes=10_000_000, train_batches_run=2, optimizer_steps=2)
    frame = results_frame([make_row(0, spec, SMALL_CARD, result)])

    read = write_and_read(frame, tmp_path / f"results{suffix}")

    pd.testing.assert_frame_equal(read, frame)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip_na_words(tmp_path: Path, suffix: str) -> None:
    # By default pandas reads "NA" and "None" in a CSV as missing values.
    card = Card("NA", 2**30, 0, "inline")
    spec = TrialSpec("classification", "resnet18", 32, 8)
    result = TrialResult("error", "emulated", error="None")
    frame = results_frame([make_row(0, spec, card, result)])

    read = write_and_read(frame, tmp_path / f"results{suffix}")

    assert read.loc[0, "card"] == "NA"
    assert read.loc[0, "error"] == "None"


# Writing.


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_replaces_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"results{suffix}"
    rows = mixed_rows()
    write_results(results_frame(rows), path)

    write_results(results_frame(rows[:1]), path)

    assert len(read_results(path)) == 1
    assert os.listdir(tmp_path) == [path.name]


def test_write_mode_follows_umask(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    previous = os.umask(0o027)
    try:
        write_results(results_frame(mixed_rows()), path)
    finally:
        os.umask(previous)

    # 0666 less the umask 0027, as a plain open() would create it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_failure_parquet(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    frame = results_frame(mixed_rows())
    write_results(frame, path)
    before = path.read_bytes()
    # pyarrow cannot convert an arbitrary Python object into a Parquet column.
    broken = frame.assign(arch=[object()] * len(frame))

    with pytest.raises(pyarrow.ArrowException):
        write_results(broken, path)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_write_failure_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.csv"
    frame = results_frame(mixed_rows())
    write_results(frame, path)
    before = path.read_bytes()

    def write_half_then_fail(self: pd.DataFrame, target: str, **kwargs: Any) -> None:
        Path(target).write_text("task,arch\nclassification,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)

    with pytest.raises(OSError):
        write_results(frame, path)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_write_failure_new_file(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    broken = results_frame(mixed_rows()).assign(arch=[object()] * 3)

    with pytest.raises(pyarrow.ArrowException):
        write_results(broken, path)

    assert os.listdir(tmp_path) == []
