import pytest
import ray
from ray.cluster_utils import Cluster

from planner import driver
from planner.cards import Card, GiB
from planner.driver import Assignment, Job, _Worker
from planner.grid import TrialSpec


@pytest.fixture(scope="module")
def mixed_cluster():
    # A head without GPUs and two nodes that declare one GPU each, of different kinds.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A100": 1})
    cluster.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:T4": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
    cluster.shutdown()


def test_each_gpu_actor_reports_its_node_and_kind(mixed_cluster):
    workers = driver.start_gpu_workers(2)
    try:
        kinds = sorted(worker.describe["accelerator_type"] for worker in workers)
        assert kinds == ["A100", "T4"]
        assert len({worker.describe["node_id"] for worker in workers}) == 2
        assert all(len(worker.describe["gpu_ids"]) == 1 for worker in workers)
    finally:
        for worker in workers:
            ray.kill(worker.handle)


def test_measured_jobs_queue_per_card_kind():
    # Each local card kind has its own queue, so each GPU only runs its own card's trials.
    a100 = Card("NVIDIA A100-SXM4-40GB", 40 * GiB, source="local")
    t4 = Card("Tesla T4", 15 * GiB, source="local")
    spec = TrialSpec("classification", "resnet18", 32, 4)
    jobs = [Job((Assignment(0, spec, a100, "measured"),)), Job((Assignment(1, spec, t4, "measured"),))]
    workers = [_Worker(None, "gpu", a100, {}), _Worker(None, "gpu", t4, {})]
    assert [job.queue for job in jobs] == [worker.queue for worker in workers]
    assert jobs[0].queue != jobs[1].queue
