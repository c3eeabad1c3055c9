import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from planner import driver
from planner.grid import parse_grid
from planner.journal import journal_path
from planner.output import read_results

# Eight emulated trials of about a second each, so a plan is still running
# when the test interrupts it.
GRID = """
cards:
  - {name: roomy, memory: 2GiB}
  - {name: cramped, memory: 150MiB}
models:
  - task: classification
    arch: resnet18
    image_size: [32, 48]
    batch_size: [2, 4]
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_killed_worker_is_replaced_and_recorded(cluster):
    grid = parse_grid(GRID)
    killed = []

    def kill_first_worker(item, result, done, total):
        # The actor that returned this result is idle now: kill it before it gets the next job.
        if not killed:
            os.kill(result.worker_pid, signal.SIGKILL)
            killed.append(result.worker_pid)

    results = driver.run_grid(grid, max_cpu_workers=1, on_result=kill_first_worker)
    assert len(results) == 8
    errors = [result for _, result in results if result.status == "error"]
    assert len(errors) == 1
    assert errors[0].error.startswith("worker process died")
    finished = [result for _, result in results if result.status in ("fits", "oom")]
    assert len(finished) == 7
    assert killed[0] not in {result.worker_pid for result in finished[1:]}


def test_slow_trial_times_out(cluster):
    # Each emulated trial takes about a second: a 0.2 s limit stops every one.
    grid = parse_grid(GRID.replace("models:", "trial: {timeout_seconds: 0.2}\nmodels:"))
    grid = grid.__class__(grid.cards[:1], grid.local, grid.trial, grid.points[:2], grid.source)
    started = time.monotonic()
    results = driver.run_grid(grid, max_cpu_workers=1)
    assert [result.status for _, result in results] == ["error", "error"]
    assert all(result.error.startswith("timed out after 0.2 s") for _, result in results)
    assert time.monotonic() - started < 60


def run_cli(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "planner", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigint_keeps_finished_trials_and_resume_completes(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    process = run_cli("grid.yaml", "-o", "out.csv", "--workers", "1", cwd=tmp_path)
    progress = []
    for line in process.stderr:
        if line.startswith("["):
            progress.append(line)
        if len(progress) == 3:
            process.send_signal(signal.SIGINT)
            break
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "interrupted" in rest

    first = read_results(tmp_path / "out.csv")
    # At least the three reported trials were kept; one more may have finished meanwhile.
    assert 3 <= len(first) < 8
    assert not journal_path(tmp_path / "out.csv").exists()

    resumed = run_cli("grid.yaml", "-o", "out.csv", "--workers", "1", "--resume", cwd=tmp_path)
    _, log = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    # Only the trials missing from the first run ran again.
    ran_again = [line for line in log.splitlines() if line.startswith("[")]
    assert len(ran_again) == 8 - len(first)
    final = read_results(tmp_path / "out.csv")
    assert len(final) == 8
    keys = final[["card", "image_size", "batch_size"]].apply(tuple, axis=1)
    assert keys.is_unique


def test_unreachable_address_fails_fast(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    started = time.monotonic()
    # Nothing listens on port 1 of this machine.
    process = run_cli("grid.yaml", "--address", "127.0.0.1:1", cwd=tmp_path)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in err
    assert time.monotonic() - started < 30


def test_resume_without_output_is_bad_input(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    process = run_cli("grid.yaml", "--resume", cwd=tmp_path)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--resume needs -o/--output" in err
