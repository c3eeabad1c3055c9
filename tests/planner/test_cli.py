import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from planner import cli, driver
from planner.output import read_results
from planner.tables import COLUMNS

GRID = """
cards:
  - {name: roomy, memory: 2GiB}
  - {name: cramped, memory: 250MiB}
models:
  - task: classification
    arch: resnet18
    image_size: 32
    batch_size: [2, 4]
  - task: classification
    arch: resnet34
    image_size: 32
    batch_size: 2
"""


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "planner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_cli_plans_grid_and_writes_parquet(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    done = run_cli("grid.yaml", "-o", "out.parquet", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frame = read_results(tmp_path / "out.parquet")
    # 3 grid points x 2 cards
    assert len(frame) == 6
    assert list(frame.columns) == COLUMNS
    by_card = frame.groupby("card")["status"].apply(set).to_dict()
    assert by_card["roomy"] == {"fits"}
    assert by_card["cramped"] == {"fits", "oom"}  # resnet18 fits in 250 MiB, resnet34 does not
    assert "[6/6]" in done.stderr
    assert "roomy: 2.00 GiB" in done.stdout
    assert "max fitting batch size" in done.stdout
    # One table row per architecture: resnet18 fits at both batch sizes on the cramped card.
    cramped = done.stdout.split("cramped:")[1]
    assert "resnet18" in cramped
    assert "resnet34" in cramped
    assert "OOM" in cramped


@pytest.mark.parametrize(
    ("grid", "args", "message"),
    [
        ("models: []\n", [], "models is [], but it must be a non-empty list"),
        (GRID, ["-o", "out.xlsx"], "output file 'out.xlsx' has the extension '.xlsx'. Use .csv or .parquet"),
        (GRID, ["--backend", "measured"], "--backend measured runs trials only on the GPUs Ray finds"),
        (GRID, ["--workers", "0"], "--workers is 0, but it must be at least 1"),
    ],
    ids=["grid", "output", "backend", "workers"],
)
def test_cli_bad_input_exits_2(tmp_path, grid, args, message):
    (tmp_path / "grid.yaml").write_text(grid)
    done = run_cli("grid.yaml", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not list(tmp_path.glob("out*"))


def test_cli_missing_grid_file_exits_2(tmp_path):
    done = run_cli("nowhere.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "grid file 'nowhere.yaml' not found" in done.stderr


def test_cli_internal_failure_exits_1(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("injected driver failure")

    (tmp_path / "grid.yaml").write_text(GRID)
    monkeypatch.setattr(driver, "run_grid", fail)
    code = cli.main([str(tmp_path / "grid.yaml"), "-q"])
    assert code == 1
    assert "error: the plan failed: RuntimeError: injected driver failure" in capsys.readouterr().err


def test_format_progress_line():
    from planner.cards import Card, MiB
    from planner.grid import TrialSpec
    from workers.results import TrialResult

    item = driver.Assignment(0, TrialSpec("classification", "resnet18", 64, 8), Card("c", 512 * MiB), "emulated")
    result = TrialResult(status="oom", backend="emulated", oom_stage="backward", seconds=1.25)
    line = cli.format_progress(item, result, 3, 10)
    assert line == "[3/10] c (emulated) classification resnet18 64px bs=8 fp32: OOM in backward (1.2 s)"


def test_cli_sizing_report(tmp_path):
    repository = __import__("pathlib").Path(__file__).resolve().parents[2]
    done = run_cli(str(repository / "examples" / "sizing.yaml"), "--report", "report", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = tmp_path / "report"
    summary = (report / "report.md").read_text()
    for card in ("T4", "A10G", "A100-40GB", "H100-80GB"):
        assert (report / f"heatmap-{card}.png").stat().st_size > 0
        assert f"## {card}" in summary
    for name in ("trials.csv", "searches.csv", "sizing.csv"):
        assert (report / name).exists()
    # The summary answers "how many cards and what accumulation" per card type.
    assert "### How many cards" in summary
    assert "accumulation steps x micro-batch" in summary
    assert "Cluster sizing" in done.stdout


def test_cli_report_path_is_file_exits_2(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    (tmp_path / "taken").write_text("")
    done = run_cli("grid.yaml", "--report", "taken", cwd=tmp_path)
    assert done.returncode == 2
    assert "--report 'taken' is a file, not a folder" in done.stderr


def test_cli_runs_the_learner_factory_example(tmp_path):
    # Run from another folder: the factory imports from the grid file's folder.
    example = Path(__file__).resolve().parents[2] / "examples" / "own_learner.yaml"
    done = run_cli(str(example), "-o", "out.csv", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    frame = read_results(tmp_path / "out.csv")
    grid_rows = frame[frame["search"].isna()]
    # 2 batch sizes x 2 review lengths on 3 cards.
    assert len(grid_rows) == 12
    assert set(grid_rows["status"]) <= {"fits", "oom"}
    assert set(grid_rows["arch"]) == {"own_learner:make_learner"}
    assert grid_rows["probe_batches"].str.startswith("train: the ").all()
    assert set(grid_rows["params"]) == {"max_tokens=500, channels=256", "max_tokens=2000, channels=256"}
    answers = pd.read_csv(tmp_path / "out.search.csv").set_index("card")["answer"]
    assert answers["T4"] == answers["A100-40GB"] == 800  # the training set's size caps the search
    assert 8 <= answers["emu-512MiB"] < 64
    assert "learner own_learner:make_learner" in done.stdout


def test_cli_unimportable_learner_exits_2(tmp_path):
    (tmp_path / "grid.yaml").write_text("cards: [T4]\nmodels: [{learner: my_models:make, batch_size: 8}]\n")

    done = run_cli("grid.yaml", "-o", "out.csv", cwd=tmp_path)

    assert done.returncode == 2
    assert "models[0].learner is 'my_models:make', but module 'my_models' cannot be imported" in done.stderr
    assert not list(tmp_path.glob("out*"))
