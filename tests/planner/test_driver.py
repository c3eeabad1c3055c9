import ray
import pytest

from planner import driver
from planner.grid import parse_grid

GRID = """
cards:
  - {name: roomy, memory: 2GiB}
  - {name: cramped, memory: 100MiB}
trial: {train_batches: 2, valid_batches: 1}
models:
  - task: classification
    arch: resnet18
    image_size: 32
    batch_size: [2, 4]
"""


@pytest.fixture(scope="module")
def cluster():
    # Two GPUs that this machine does not have: Ray still pins actors to them.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_gpu_actors_pinned_to_distinct_gpus(cluster):
    workers = driver.start_gpu_workers(2)
    try:
        ids = [worker.describe["gpu_ids"] for worker in workers]
        assert all(len(gpu_ids) == 1 for gpu_ids in ids)
        assert ids[0] != ids[1]
        assert sorted(worker.describe["cuda_visible_devices"] for worker in workers) == ["0", "1"]
    finally:
        for worker in workers:
            ray.kill(worker.handle)


def test_run_grid_streams_every_trial(cluster):
    grid = parse_grid(GRID)
    seen = []
    results = driver.run_grid(grid, on_result=lambda item, result, done, total: seen.append((done, total)))
    # 2 batch sizes x 2 cards, all emulated: the declared GPUs have no CUDA device.
    assert len(results) == 4
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    outcomes = {(item.card.name, item.spec.batch_size): result.status for item, result in results}
    assert outcomes == {
        ("roomy", 2): "fits",
        ("roomy", 4): "fits",
        ("cramped", 2): "oom",  # resnet18's weights, grads and Adam state take about 180 MiB
        ("cramped", 4): "oom",
    }
    assert {result.backend for _, result in results} == {"emulated"}


def test_run_grid_releases_actors(cluster):
    driver.run_grid(parse_grid(GRID), max_cpu_workers=1)
    # Actors are killed asynchronously; wait until their CPUs are back.
    import time

    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def test_run_grid_local_without_gpu_raises(cluster):
    grid = parse_grid(GRID.replace("cards:\n", "cards:\n  - local\n"))
    with pytest.raises(driver.PlanError, match="the grid lists the card 'local', but Ray found no usable CUDA GPU"):
        driver.run_grid(grid)


def test_check_backend_measured_rejects_other_cards():
    with pytest.raises(driver.PlanError, match=r"--backend measured runs trials only on the GPUs Ray finds"):
        driver.check_backend(parse_grid(GRID), "measured")
