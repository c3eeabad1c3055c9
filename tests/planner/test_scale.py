import ray

from planner import driver
from planner.grid import parse_grid

# 40 grid points on 50 simulated cards: 2,000 trials from 40 traces.
CARDS = "\n".join(f"  - {{name: sim-{mib}MiB, memory: {mib}MiB, backend: simulated}}" for mib in range(200, 700, 10))
BATCHES = list(range(2, 82, 2))


def test_two_thousand_simulated_trials_all_recorded():
    grid = parse_grid(
        f"""
cards:
{CARDS}
models:
  - {{task: classification, arch: resnet18, image_size: 32, batch_size: {BATCHES}}}
"""
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        seen = []
        results = driver.run_grid(grid, on_result=lambda item, result, done, total: seen.append((done, total)))
    finally:
        ray.shutdown()
    assert len(results) == 2000
    assert seen[-1] == (2000, 2000)
    assert {result.status for _, result in results} == {"fits", "oom"}
    assert not [result.error for _, result in results if result.status == "error"]
    # Every (card, batch size) pair appears once.
    assert len({(item.card.name, item.spec.batch_size) for item, _ in results}) == 2000


def test_slow_trial_does_not_hold_back_others():
    # The first job computes resnet50 on a 160 px batch of 32 for real, which takes
    # several times longer than each of the six small trials after it.
    grid = parse_grid(
        """
cards:
  - {name: emulated, memory: 8GiB}
models:
  - {task: classification, arch: resnet50, image_size: 160, batch_size: 32}
  - {task: classification, arch: resnet18, image_size: 32, batch_size: [2, 4, 6, 8, 10, 12]}
"""
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = driver.run_grid(grid)
    finally:
        ray.shutdown()
    sizes = [item.spec.image_size for item, _ in results]
    # The other worker went on with the small trials while the slow one ran: a
    # queue that waited for every worker would finish the slow one first or second.
    assert sizes.index(160) >= 3
    assert all(result.status == "fits" for _, result in results)
