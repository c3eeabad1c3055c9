"""Training throughput per GPU in samples per second: measured where trials recorded it, else estimated.

The estimate counts the floating-point operations (FLOPs) of one training
step (forward and backward) per sample with
``torch.utils.flop_counter.FlopCounterMode``, on a model whose parameters are
meta tensors, so nothing is computed and no weights are downloaded. It divides
them by the card's dense peak throughput for the precision, scaled by an
assumed utilization. It is an estimate, and every table that shows it labels
it one: real throughput also depends on memory bandwidth, the data loader, kernel
choice and the micro-batch size, none of which it models.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pandas as pd

# The fraction of the dense peak a training step is assumed to reach.
# NOTE: an assumption, checked against no measurement. The operators FLOP
# counting leaves out (batch norm, activations, the optimizer step) are bound
# by memory bandwidth, so CNNs on tensor cores may reach well under 40%.
DEFAULT_UTILIZATION = 0.4

TERA = 10**12
SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class PeakThroughput:
    """Dense peak throughput of one card in TFLOPS (10^12 FLOPs per second), without structured sparsity.

    A field is None where the card has no such unit or no source gave the
    figure. ``fp16_tflops`` and ``bf16_tflops`` are tensor-core rates with
    FP32 accumulate, which PyTorch's autocast uses.
    """

    fp32_tflops: float | None  # CUDA cores
    tf32_tflops: float | None  # tensor cores; none below compute capability 8.0
    fp16_tflops: float | None
    bf16_tflops: float | None  # none below compute capability 8.0
    source: str


PRECISION_FIELDS = ("fp32", "tf32", "fp16", "bf16")

_A100_SOURCE = (
    "https://glennklockwood.com/garden/processors/A100 (dense FP32 19.5, TF32 156, FP16 312, "
    "BF16 312 TFLOPS), which cites NVIDIA's A100 datasheet "
    "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
)
_V100_SOURCE = (
    "https://www.techrival.com/nvidia-volta-tesla-v100-cards-detailed-150w-single-slot-300w-dual-slot-gv100-powered-pcie-accelerators/ "
    "(NVIDIA's GTC 2017 table at 1455 MHz: FP32 15, tensor core 120 TFLOPS; later SXM2 "
    "datasheets give 15.7 and 125, so these are the lower figures)"
)

# Cards of planner/catalog.py whose peak a source was found for. Where one
# catalog name covers several form factors, the entry takes the lower figures,
# because a throughput that is too high makes a plan look cheaper than it is.
# A10G and the MIG slices have no entry: no source with their tensor-core
# rates was found. ``sizing.peak_tflops`` in the grid adds or overrides entries.
PEAK_THROUGHPUT: dict[str, PeakThroughput] = {
    "T4": PeakThroughput(
        8.1, None, 65.0, None,
        "https://hmc-tech.com/gpu/nvidia-l4-vs-nvidia-t4 (T4: FP32 8.14, FP16 tensor with FP32 "
        "accumulate 65.13 TFLOPS, no TF32 or BF16) and NVIDIA's announced 8.1 and 65 TFLOPS as "
        "quoted by https://geektopia.es (2018-09-13)",
    ),
    "L4": PeakThroughput(
        31.33, 62.67, 125.34, 125.34,
        "https://hmc-tech.com/gpu/nvidia-l4-vs-nvidia-t4 (dense rates at the 2040 MHz boost clock). "
        "NOTE: NVIDIA's datasheet gives TF32 as 120 TFLOPS with sparsity, so 60 dense, a few "
        "percent lower",
    ),
    "RTX-4090": PeakThroughput(
        82.58, 82.58, 165.15, 165.15,
        "https://waredb.com/processor/nvidia-geforce-rtx-4090 (dense tensor FP16 and BF16 "
        "165.15, TF32 82.58, FP32 82.58 TFLOPS)",
    ),
    "V100-16GB": PeakThroughput(15.0, None, 120.0, None, _V100_SOURCE),
    "V100-32GB": PeakThroughput(15.0, None, 120.0, None, _V100_SOURCE),
    "A100-40GB": PeakThroughput(19.5, 156.0, 312.0, 312.0, _A100_SOURCE),
    "A100-80GB": PeakThroughput(19.5, 156.0, 312.0, 312.0, _A100_SOURCE),
    # The catalog's H100-80GB may be the SXM or the PCIe card: the PCIe figures are lower.
    "H100-80GB": PeakThroughput(
        51.0, 378.0, 756.5, 756.5,
        "https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html (NVIDIA's H100 table: "
        "H100 PCIe FP32 51, TF32 756, BF16 and FP16 1,513 TFLOPS 'shown with sparsity, "
        "1/2 lower without'; H100 SXM is higher)",
    ),
    "H200": PeakThroughput(
        66.9, 494.7, 989.4, 989.4,
        "https://glennklockwood.com/garden/processors/h100 (H100 SXM5 dense FP32 66.9, TF32 "
        "494.7, FP16 and BF16 989.4 TFLOPS; 'H200 GPUs are the same as H100 GPUs ... with 144 GB "
        "of HBM3e'). The catalog's H200 is the SXM card",
    ),
}


def peak_for(card: str, overrides: Mapping[str, Mapping[str, float]] | None = None) -> PeakThroughput | None:
    """Return the card's peak throughput: the table's entry with the grid's overrides applied."""
    base = PEAK_THROUGHPUT.get(card)
    override = (overrides or {}).get(card)
    if not override:
        return base
    if base is None:
        base = PeakThroughput(None, None, None, None, "")
    changes = {f"{name}_tflops": float(value) for name, value in override.items()}
    source = "sizing.peak_tflops in the grid" + (f", otherwise {base.source}" if base.source else "")
    return replace(base, source=source, **changes)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step (forward and backward) for one sample, by kind of operator."""

    convolution_flops: int
    matmul_flops: int  # matrix multiplications, and attention where the model has it

    @property
    def total_flops(self) -> int:
        return self.convolution_flops + self.matmul_flops


@dataclass(frozen=True)
class Throughput:
    """Samples per second on one GPU, or None with the reason in ``source``."""

    samples_per_second: float | None
    source: str  # "measured ..." or "estimate: ...", or why there is none


def build_meta_model(task: str, arch: str, classes: int, image_size: int):
    """Build the model fastai's ``vision_learner`` or ``unet_learner`` builds, with parameters on the meta device.

    The parameters have shapes and no data, so building is fast and no
    pretrained weights are downloaded. ``image_size`` matters for
    segmentation only: fastai's DynamicUnet sizes its decoder from it.
    """
    from fastai.vision.learner import create_unet_model, create_vision_model
    from torchvision import models

    from workers.learners import parameters_on_meta  # the simulated backend builds its models the same way

    architecture = getattr(models, arch)
    with parameters_on_meta():
        if task == "classification":
            return create_vision_model(architecture, classes, pretrained=False)
        return create_unet_model(architecture, classes, (image_size, image_size), pretrained=False)


@functools.lru_cache(maxsize=None)
def count_step_flops(task: str, arch: str, classes: int, image_size: int) -> StepFlops:
    """Count the FLOPs of one training step per sample, on meta tensors.

    The step runs on a batch of two, because batch norm in training mode
    rejects one sample per channel, and the counts are halved. FlopCounterMode
    counts convolutions and matrix multiplications (2 FLOPs per
    multiply-add), the operators that dominate a CNN. Element-wise operators,
    normalization and the optimizer step are not counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build_meta_model(task, arch, classes, image_size)
    model.train()
    batch = torch.empty(2, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        output = model(batch)
        output.float().sum().backward()
    convolution = matmul = 0
    for operator, flops in counter.get_flop_counts()["Global"].items():
        if "convolution" in str(operator):
            convolution += flops
        else:
            matmul += flops
    return StepFlops(convolution // 2, matmul // 2)


def estimate_samples_per_second(
    flops: StepFlops, peak: PeakThroughput, precision: str, utilization: float = DEFAULT_UTILIZATION
) -> Throughput:
    """Estimate samples per second on one GPU from the FLOPs per sample and the card's peak.

    In fp32, convolutions run on TF32 tensor cores where the card has them,
    because ``torch.backends.cudnn.allow_tf32`` is True by default, and
    matrix multiplications run in FP32, because
    ``torch.backends.cuda.matmul.allow_tf32`` is False by default (both
    checked on torch 2.14.1). In fp16 and bf16, autocast runs both in half
    precision on tensor cores.
    """
    if precision == "fp32":
        convolution_rate = peak.tf32_tflops or peak.fp32_tflops
        matmul_rate = peak.fp32_tflops
        rates = "TF32 convolutions and FP32 matmuls" if peak.tf32_tflops else "FP32"
    else:
        convolution_rate = matmul_rate = peak.fp16_tflops if precision == "fp16" else peak.bf16_tflops
        rates = f"{precision.upper()} tensor cores"
    if convolution_rate is None or (flops.matmul_flops and matmul_rate is None):
        return Throughput(None, f"no {precision} peak throughput for this card")
    seconds = flops.convolution_flops / (convolution_rate * TERA)
    if flops.matmul_flops:
        seconds += flops.matmul_flops / (matmul_rate * TERA)
    if seconds <= 0:
        return Throughput(None, "no FLOPs counted for this model")
    description = (
        f"estimate: {flops.total_flops / 1e9:.2f} GFLOP per sample at {utilization:.0%} of peak ({rates})"
    )
    return Throughput(utilization / seconds, description)


def measured_samples_per_second(trials: pd.DataFrame, batch_size: int) -> Throughput | None:
    """Return the samples per second that measured trials of one row on one card recorded, if any.

    ``trials`` contains that row's trials on that card. Only trials of the
    ``measured`` backend count: emulated and simulated trials run on the
    CPU, so their speed does not predict the card's. Of those that fitted,
    the one with the largest batch size up to ``batch_size`` is used,
    because throughput changes with the batch.
    """
    if "samples_per_second" not in trials:
        return None
    rows = trials[(trials["backend"] == "measured") & (trials["status"] == "fits")]
    rows = rows[rows["samples_per_second"].notna() & (rows["batch_size"] <= batch_size)]
    if rows.empty:
        return None
    best = rows.sort_values("batch_size").iloc[-1]
    return Throughput(float(best["samples_per_second"]), f"measured at batch size {int(best['batch_size'])}")


def epoch_hours(dataset_size: int, samples_per_second: float, gpus: int) -> float:
    """Hours for one pass over ``dataset_size`` samples on ``gpus`` GPUs, assuming linear scaling."""
    return dataset_size / (samples_per_second * gpus) / SECONDS_PER_HOUR


def cost_per_epoch(dataset_size: int, samples_per_second: float, price_per_gpu_hour: float) -> float:
    """Cost of one epoch: GPU-hours times the price per card-hour.

    Under linear scaling it is the same on any number of GPUs: n GPUs take
    1/n of the time and cost n times as much per hour.
    """
    if not math.isfinite(samples_per_second) or samples_per_second <= 0:
        raise ValueError(f"samples_per_second is {samples_per_second!r}, but it must be a positive number")
    return dataset_size / samples_per_second / SECONDS_PER_HOUR * price_per_gpu_hour
