"""Tests of scripts/validate_gpu.py that run on the CPU.

The subprocess tests run the script as a user would. The fake-GPU test runs
its measured path in this process, with the simulator in place of the GPU.
"""

import csv
import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from planner.cards import GiB

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "validate_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("validate_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


validate_gpu = load_script()


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[1],
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames), list(reader)


def point(row: dict[str, str]) -> tuple:
    return row["arch"], row["precision"], int(row["batch_size"]), row["card"]


def test_simulate_only_quick_writes_tables(tmp_path):
    output = tmp_path / "check.csv"
    completed = run_script("--simulate-only", "--quick", "--output", str(output))
    assert completed.returncode == 0, completed.stderr

    columns, rows = read_csv(output)
    assert columns == list(validate_gpu.COLUMNS)
    cards = ["H200", *validate_gpu.EMULATED_CARDS]  # every emulated card is smaller than the H200
    points = [(model, batch) for model in validate_gpu.QUICK_GRID for batch in model.batch_sizes]
    assert len(rows) == len(points) * len(cards)
    assert [row["card"] for row in rows[: len(cards)]] == cards
    assert {row["measured_status"] for row in rows} == {"not run"}
    assert {row["predicted_status"] for row in rows} == {"fits", "oom"}
    assert all(int(row["predicted_peak_reserved_bytes"]) > 0 for row in rows)

    by_point = {point(row): row for row in rows}
    # The U-Net at batch 32 needs about 7.7 GiB: too much for the 4.4 GiB budget of a 1g.5gb slice.
    assert by_point[("resnet34", "fp16", 32, "A100-40GB-MIG-1g.5gb")]["predicted_status"] == "oom"
    assert by_point[("resnet34", "fp16", 32, "T4")]["predicted_status"] == "fits"
    assert {row["predicted_status"] for row in rows if row["card"] == "H200"} == {"fits"}

    max_batch_path = tmp_path / "check_max_batch.csv"
    columns, summary = read_csv(max_batch_path)
    assert columns == list(validate_gpu.MAX_BATCH_COLUMNS)
    assert len(summary) == len(validate_gpu.QUICK_GRID) * len(cards)
    largest = {(row["arch"], row["precision"], row["card"]): row for row in summary}
    assert largest[("resnet34", "fp16", "A100-40GB-MIG-1g.5gb")]["predicted_max_batch_size"] == "8"
    assert largest[("resnet34", "fp16", "H200")]["predicted_max_batch_size"] == "32"
    assert {row["measured_max_batch_size"] for row in summary} == {""}

    markdown = (tmp_path / "check.md").read_text()
    assert "## Trials" in markdown
    assert "## Largest fitting batch size" in markdown
    assert "No grid point was skipped." in markdown
    assert markdown in completed.stdout


def test_spent_budget_skips_every_point(tmp_path):
    output = tmp_path / "check.csv"
    completed = run_script("--simulate-only", "--quick", "--budget-seconds", "0.001", "--output", str(output))
    assert completed.returncode == 0, completed.stderr

    _, rows = read_csv(output)
    assert len(rows) == validate_gpu._count(validate_gpu.QUICK_GRID) * (1 + len(validate_gpu.EMULATED_CARDS))
    assert {row["predicted_status"] for row in rows} == {"skipped"}
    assert {row["measured_status"] for row in rows} == {"skipped"}
    assert all("time budget" in row["note"] for row in rows)
    markdown = (tmp_path / "check.md").read_text()
    points = validate_gpu._count(validate_gpu.QUICK_GRID)
    assert f"{points} grid points were skipped because the time budget of 0.001 s ran out" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_no_gpu_exits_2_with_message(tmp_path):
    output = tmp_path / "check.csv"
    completed = run_script("--quick", "--output", str(output))
    assert completed.returncode == 2
    assert completed.stderr.strip() == validate_gpu.NO_GPU_MESSAGE
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "--simulate-only" in completed.stderr
    assert not output.exists()


def test_invalid_output_folder_rejected(tmp_path):
    completed = run_script("--simulate-only", "--output", str(tmp_path / "missing" / "check.csv"))
    assert completed.returncode == 2
    assert "does not exist" in completed.stderr


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ({16: "fits", 32: "fits", 64: "oom"}, "32"),
        ({16: "oom", 32: "oom"}, "none"),
        ({16: "fits", 32: "skipped"}, ">=16"),
        ({16: "oom", 32: "skipped"}, "unknown"),
        ({16: "not run", 32: "not run"}, ""),
        ({16: "fits", 32: "error", 64: "fits"}, "64"),
    ],
)
def test_max_batch_text(statuses, expected):
    assert validate_gpu.max_batch_text(statuses) == expected


FAKE_GPU_MEMORY = 16 * GiB


def fake_gpu_environment():
    return validate_gpu.Environment(
        gpu_name="Fake GPU",
        total_memory_bytes=FAKE_GPU_MEMORY,
        compute_capability=(8, 0),
        workspace_bytes=validate_gpu.workspace_bytes_for((8, 0)),
        measured=True,
        driver_version="fake",
    )


def test_measured_path_with_fake_gpu(tmp_path, monkeypatch):
    # A "GPU" whose trials are simulated on a card with the capped budget: the
    # script's measured path then runs on the CPU, and every prediction must
    # agree with its measurement.
    from workers.trial import run_simulated_trial

    calls = []

    def fake_measure_once(spec, card, memory_fraction):
        capacity = card.budget_bytes if memory_fraction is None else round(memory_fraction * FAKE_GPU_MEMORY)
        calls.append((spec.batch_size, card.name, memory_fraction))
        [result] = run_simulated_trial(spec, [replace(card, memory_bytes=capacity, overhead_bytes=0)])
        return replace(result, backend="measured")

    grid = (validate_gpu.ModelRow("classification", "resnet18", 224, "fp32", (64, 256), 10),)
    monkeypatch.setattr(validate_gpu, "QUICK_GRID", grid)
    monkeypatch.setattr(validate_gpu, "cuda_gpu_present", lambda: True)
    monkeypatch.setattr(validate_gpu, "gpu_environment", fake_gpu_environment)
    monkeypatch.setattr(validate_gpu, "warm_up", lambda environment: replace(environment, outside_allocator_bytes=400 * 2**20))
    monkeypatch.setattr(validate_gpu, "measure_once", fake_measure_once)

    output = tmp_path / "fake.csv"
    assert validate_gpu.main(["--quick", "--output", str(output)]) == 0

    _, rows = read_csv(output)
    # Cards with less memory than the fake GPU's 16 GiB.
    cards = ["Fake GPU", "A100-40GB-MIG-1g.5gb", "A100-40GB-MIG-2g.10gb", "T4"]
    assert [row["card"] for row in rows] == cards * 2
    by_point = {point(row): row for row in rows}

    # resnet18 at batch 256 needs about 8 GiB, so only the 4.4 GiB slice is run
    # under its cap. The other cards are inferred from the uncapped run.
    assert calls == [
        (64, "Fake GPU", None),
        (256, "Fake GPU", None),
        (256, "A100-40GB-MIG-1g.5gb on Fake GPU", pytest.approx(validate_gpu.CATALOG["A100-40GB-MIG-1g.5gb"].budget_bytes / FAKE_GPU_MEMORY)),
    ]
    slice_row = by_point[("resnet18", "fp32", 256, "A100-40GB-MIG-1g.5gb")]
    assert slice_row["measured_by"] == "run"
    assert slice_row["predicted_status"] == slice_row["measured_status"] == "oom"
    assert slice_row["reserved_ratio"] == ""  # no ratio for a trial that ran out of memory
    assert by_point[("resnet18", "fp32", 256, "T4")]["measured_by"] == "inferred"
    assert by_point[("resnet18", "fp32", 64, "Fake GPU")]["measured_by"] == "run"

    assert {row["status_agrees"] for row in rows} == {"yes"}
    for card in ("Fake GPU", "T4"):
        row = by_point[("resnet18", "fp32", 256, card)]
        assert float(row["reserved_ratio"]) == pytest.approx(1.0, abs=0.01)
        assert float(row["allocated_ratio"]) == pytest.approx(1.0, abs=0.01)

    _, summary = read_csv(tmp_path / "fake_max_batch.csv")
    largest = {row["card"]: row for row in summary}
    assert largest["A100-40GB-MIG-1g.5gb"]["predicted_max_batch_size"] == "64"
    assert largest["A100-40GB-MIG-1g.5gb"]["measured_max_batch_size"] == "64"
    assert {row["agrees"] for row in summary} == {"yes"}

    markdown = (tmp_path / "fake.md").read_text()
    assert "Fake GPU, total_memory 17,179,869,184 bytes" in markdown
    assert "**by = inferred**" in markdown


def test_emulated_cards_use_gpu_workspace():
    environment = fake_gpu_environment()
    targets = validate_gpu.emulated_targets(environment)
    assert [target.name for target in targets] == ["A100-40GB-MIG-1g.5gb", "A100-40GB-MIG-2g.10gb", "T4"]
    for target in targets:
        catalog_card = validate_gpu.CATALOG[target.name]
        assert target.simulated_card.budget_bytes == catalog_card.budget_bytes == target.capacity_bytes
        assert target.simulated_card.workspace_bytes == environment.workspace_bytes
        assert target.memory_fraction == catalog_card.budget_bytes / FAKE_GPU_MEMORY
