"""Per-card tables: cell units, and rows of tasks without an image size."""

from __future__ import annotations

from planner.cards import GiB, MiB
from planner.tables import card_tables, cell_unit, results_frame


def row(trial: int, batch_size: int, peak_bytes: int | None, status: str = "fits", **values) -> dict:
    values = {
        "task": "classification",
        "arch": "resnet18",
        "image_size": 64,
        "precision": "fp32",
        "classes": 10,
        **values,
    }
    return {
        **values,
        "batch_size": batch_size,
        "card": "card",
        "card_memory_bytes": 16 * GiB,
        "card_overhead_bytes": 0,
        "backend": "emulated",
        "status": status,
        "peak_allocated_bytes": peak_bytes,
        "peak_reserved_bytes": peak_bytes,
        "entry": 0,
        "trial": trial,
    }


TABLE = dict(task="tabular", arch="TabularModel", image_size=None, classes=2, n_cont=8, n_cat=4, layers="200,100")


def test_small_peaks_shown_in_mib():
    frame = results_frame([row(0, 64, 40 * MiB, **TABLE, cardinality=10), row(1, 256, 95 * MiB, **TABLE, cardinality=10)])

    [table] = card_tables(frame).values()

    assert cell_unit(frame) == ("MiB", MiB)
    assert list(table.iloc[0][["64", "256"]]) == ["40", "95"]


def test_large_peaks_shown_in_gib():
    frame = results_frame([row(0, 64, 512 * MiB), row(1, 128, int(1.5 * GiB)), row(2, 256, None, status="oom")])

    [table] = card_tables(frame).values()

    assert cell_unit(frame) == ("GiB", GiB)
    assert list(table.iloc[0][["64", "128", "256"]]) == ["0.50", "1.50", "OOM"]


def test_rows_without_image_size_are_kept():
    text = dict(task="text_classifier", arch="AWD_LSTM", image_size=None, classes=2, seq_len=256, vocab_size=60000)
    frame = results_frame(
        [
            row(0, 16, 2 * GiB),
            row(1, 16, 3 * GiB, **text),
            row(2, 256, GiB, **TABLE, cardinality=10),
            # Differs from the row above only in cardinality: a row of its own.
            row(3, 256, None, status="oom", **TABLE, cardinality=5000),
        ]
    )

    [table] = card_tables(frame).values()

    assert len(table) == 4
    assert "seq_len" in table.index.names
    assert "cardinality" in table.index.names
    assert sorted(table["256"]) == ["", "", "1.00", "OOM"]
    assert list(table["max fitting batch size"]).count("none") == 1
