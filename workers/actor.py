"""The Ray actor that runs trials, one per GPU or a pool of them on CPUs."""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from typing import Any, Literal

import ray

from planner.cards import Card
from planner.grid import TrialSpec
from workers.results import TrialResult

BackendName = Literal["measured", "emulated", "simulated"]


class TrialRunner:
    """Run trials one at a time in this process. Wrapped as a Ray actor by ``actor_class``."""

    def __init__(self) -> None:
        # fastai and torchvision warn about deprecated arguments on every
        # learner; a trial's result already carries what matters.
        warnings.filterwarnings("ignore")
        import fastai.vision.all  # noqa: F401  (import once, here, not in the first trial)

    def describe(self) -> dict[str, Any]:
        """Return where this actor runs: host, process, GPU ids Ray gave it and the CUDA device it sees."""
        import torch

        node_id = ray.get_runtime_context().get_node_id()
        info: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node_id": node_id,
            "accelerator_type": _accelerator_type(node_id),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_available": torch.cuda.is_available(),
            "device_name": None,
            "memory_bytes": None,
            "torch_version": torch.__version__,
        }
        if info["cuda_available"]:
            properties = torch.cuda.get_device_properties(0)
            info["device_name"] = properties.name
            info["memory_bytes"] = properties.total_memory
        return info

    def run(self, spec: TrialSpec, card: Card, backend: BackendName) -> TrialResult:
        """Run one trial of ``spec`` on ``card`` with the measured or emulated backend."""
        from workers.backends import EmulatedBackend, MeasuredBackend
        from workers.trial import run_trial

        backend_type = MeasuredBackend if backend == "measured" else EmulatedBackend
        return run_trial(spec, backend_type(card))

    def run_job(self, assignments: tuple[Any, ...]) -> list[TrialResult]:
        """Run a job's assignments and return one result each, in order.

        Simulated assignments share one grid point: one trace answers for all their cards.
        """
        from workers.trial import run_simulated_trial

        first = assignments[0]
        if first.backend == "simulated":
            results = run_simulated_trial(first.spec, [item.card for item in assignments])
        else:
            results = [self.run(item.spec, item.card, item.backend) for item in assignments]
        return [dataclasses.replace(result, worker_pid=os.getpid()) for result in results]

    def ping(self) -> bool:
        return True


def _accelerator_type(node_id: str) -> str | None:
    """Return the GPU kind a node declares with Ray's ``accelerator_type:NAME`` resource, if any."""
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            for resource in node.get("Resources", {}):
                if resource.startswith("accelerator_type:"):
                    return resource.removeprefix("accelerator_type:")
    return None


def actor_class(*, num_gpus: int = 0, num_cpus: float = 1):
    """Return the Ray actor class for ``TrialRunner`` with the given resources."""
    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0)(TrialRunner)
