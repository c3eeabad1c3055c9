"""Sizing arithmetic against hand-worked cases, and the sizing section's error messages.

The frames come from ``results_frame`` and ``search_frame`` with rows shaped
like a real plan's: no Ray and no fits run here. The T4 rows are the peaks a
simulated run of examples/search.yaml recorded with torch 2.14.1.
"""

import math
import warnings

import pandas as pd
import pytest

from planner.cards import CATALOG, GiB, MiB, Card
from planner.grid import AutoRange, Headroom, SearchSpec, TrialSpec
from planner.search import Probe, SearchOutcome
from planner.sizing import (
    SIZING_COLUMNS,
    SizingSpec,
    SizingTarget,
    accumulation_plan,
    count_parameter_bytes,
    gpus_needed,
    model_key,
    parse_sizing,
    size_cluster,
)
from planner.tables import results_frame, search_frame
from planner.throughput import StepFlops, count_step_flops, estimate_samples_per_second, peak_for

warnings.filterwarnings("ignore", category=UserWarning)

INLINE = Card("card-16GiB", 16 * GiB, 0, "inline")
RESNET18 = model_key("classification", "resnet18", 10, 64)
RESNET50 = model_key("classification", "resnet50", 10, 224)
# fastai's resnet50 with a 10-class head has 25,619,520 parameters: 4 bytes each in fp32.
RESNET50_BYTES = 25_619_520 * 4


def trial_row(card: Card, trial: int, batch_size: int, status: str, peak_bytes: int | None, **values) -> dict:
    row = {
        "task": "classification",
        "arch": "resnet18",
        "image_size": 64,
        "batch_size": batch_size,
        "precision": "fp32",
        "classes": 10,
        "card": card.name,
        "card_memory_bytes": card.memory_bytes,
        "card_overhead_bytes": card.overhead_bytes,
        "backend": "emulated",
        "fits": status == "fits",
        "status": status,
        "oom_stage": "train forward" if status == "oom" else None,
        "peak_allocated_bytes": peak_bytes,
        "peak_reserved_bytes": peak_bytes,
        "entry": 0,
        "trial": trial,
    }
    row.update(values)
    return row


def listed_trials() -> pd.DataFrame:
    """resnet18 at 64 px on a 16 GiB card with listed batch sizes: peaks of 3, 5, 9 and 14.9 GiB, then an OOM."""
    peaks = {32: 3 * GiB, 64: 5 * GiB, 128: 9 * GiB, 256: int(14.9 * GiB)}
    rows = [trial_row(INLINE, index, size, "fits", peak) for index, (size, peak) in enumerate(peaks.items())]
    rows.append(trial_row(INLINE, 4, 512, "oom", None))
    return results_frame(rows)


T4 = CATALOG["T4"]
T4_LIMIT_BYTES = 14_533_001_216  # 15,629,025,280 less the 300 MiB overhead and 5% headroom
T4_PROBES = {
    "fp32": {8: 1_189_085_184, 64: 6_983_516_160, 128: 13_593_739_264, 136: 14_558_429_184, 144: 15_313_403_904},
    "fp16": {8: 887_095_296, 64: 3_781_165_056, 264: 14_510_194_688, 272: 14_994_636_800, 280: 15_313_403_904},
}
T4_ANSWERS = {"fp32": 128, "fp16": 264}


def t4_search_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """resnet50 at 224 px searched on a simulated T4 in fp32 and fp16, with the probes as trials."""
    rows, outcomes = [], []
    trial = 0
    for precision, probes in T4_PROBES.items():
        point = TrialSpec("classification", "resnet50", 224, 8, precision, 10)
        for size, peak in probes.items():
            rows.append(trial_row(T4, trial, size, "fits", peak, arch="resnet50", image_size=224, precision=precision,
                                  backend="simulated", search="batch_size"))
            trial += 1
        answer = T4_ANSWERS[precision]
        outcomes.append(
            SearchOutcome(
                search=SearchSpec(point, "batch_size", AutoRange(8, 2048, 8)),
                card=T4,
                backend="simulated",
                answer=answer,
                answer_peak_bytes=probes[answer],
                limit_bytes=T4_LIMIT_BYTES,
                headroom_bytes=781_451_264,
                trials=len(probes),
                probes=tuple(Probe(size, "fits", peak) for size, peak in probes.items()),
            )
        )
    return results_frame(rows), search_frame(outcomes)


def row_of(frame: pd.DataFrame, **values) -> pd.Series:
    rows = frame
    for key, value in values.items():
        rows = rows[rows[key] == value]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# accumulation and GPU counts ---------------------------------------------------


@pytest.mark.parametrize(
    ("total", "gpus", "largest", "expected"),
    [
        # 1024 on 1 GPU of at most 256: 1024 / 256 = 4 steps of 256.
        (1024, 1, 256, (4, 256, 1024)),
        # 1100 on 1 GPU: ceil(1100 / 256) = 5 steps, micro-batch ceil(1100 / 5) = 220, 5 x 220 = 1100.
        (1100, 1, 256, (5, 220, 1100)),
        # 1100 on 4 GPUs of at most 128: each needs ceil(1100 / 4) = 275, ceil(275 / 128) = 3 steps,
        # micro-batch ceil(1100 / 12) = 92, so 4 x 3 x 92 = 1104.
        (1100, 4, 128, (3, 92, 1104)),
        # 1100 on 8 GPUs: each needs ceil(137.5) = 138, 2 steps, micro-batch ceil(1100 / 16) = 69, 8 x 2 x 69 = 1104.
        (1100, 8, 128, (2, 69, 1104)),
        # 4 on 8 GPUs: each GPU still runs one sample, so the effective global batch is 8.
        (4, 8, 128, (1, 1, 8)),
    ],
)
def test_accumulation_plan_cases(total, gpus, largest, expected):
    assert accumulation_plan(total, gpus, largest) == expected


def test_gpus_needed_cases():
    assert gpus_needed(1024, 1488, 1488) == 1  # the whole batch fits one GPU: no DDP needed
    assert gpus_needed(1024, 256, 128) == 8  # ceil(1024 / 128) under DDP
    assert gpus_needed(1100, 256, 128) == 9  # ceil(1100 / 128) = ceil(8.6)
    assert gpus_needed(1024, 256, None) is None  # nothing fits with DDP's buckets
    assert gpus_needed(1024, None, None) is None  # nothing fits at all


# size_cluster ---------------------------------------------------------------------


def test_size_cluster_listed_sizes():
    trials = listed_trials()
    spec = SizingSpec(
        (SizingTarget(model=0, global_batch_size=1100, dataset_size=1_000_000, epochs=10),),
        prices={"card-16GiB": 2.0},
        utilization=0.5,
        peak_tflops={"card-16GiB": {"fp32": 10.0, "tf32": 100.0}},
    )
    sizing = size_cluster(
        trials,
        None,
        spec,
        headroom=Headroom(nbytes=GiB),
        param_bytes={RESNET18: GiB // 4},
        step_flops={RESNET18: StepFlops(convolution_flops=30 * 10**9, matmul_flops=10**9)},
    )
    assert list(sizing.columns) == SIZING_COLUMNS

    row = row_of(sizing, card="card-16GiB")
    # The limit is 16 GiB less 1 GiB of headroom: 15 GiB.
    assert row["limit_bytes"] == 15 * GiB
    assert row["source"] == "grid"
    # 256 peaked at 14.9 GiB <= 15 GiB; 512 ran out of memory.
    assert row["max_batch_size"] == 256
    # With DDP's 0.25 GiB of buckets, 256 needs 15.15 GiB > 15 GiB; 128 needs 9.25 GiB.
    assert row["ddp_bytes"] == GiB // 4
    assert row["ddp_max_batch_size"] == 128

    # Without accumulation: ceil(1100 / 128) = 9 GPUs of ceil(1100 / 9) = 123, 9 x 123 = 1107.
    assert row["gpus_needed"] == 9
    assert row["micro_batch_size"] == 123
    assert row["effective_global_batch_size"] == 1107
    # 1 GPU: 5 steps of 220. 2 GPUs: each needs 550, ceil(550 / 128) = 5 steps of ceil(1100 / 10) = 110.
    assert (row["accumulation_steps_1gpu"], row["micro_batch_size_1gpu"], row["effective_global_batch_size_1gpu"]) == (5, 220, 1100)
    assert (row["accumulation_steps_2gpu"], row["micro_batch_size_2gpu"], row["effective_global_batch_size_2gpu"]) == (5, 110, 1100)
    assert (row["accumulation_steps_4gpu"], row["micro_batch_size_4gpu"], row["effective_global_batch_size_4gpu"]) == (3, 92, 1104)
    assert (row["accumulation_steps_8gpu"], row["micro_batch_size_8gpu"], row["effective_global_batch_size_8gpu"]) == (2, 69, 1104)

    # Throughput: 30e9 convolution FLOPs at 100 TFLOPS (TF32) take 3e-4 s, 1e9 matmul FLOPs at
    # 10 TFLOPS (FP32) take 1e-4 s: 4e-4 s per sample, so 0.5 / 4e-4 = 1250 samples/s at 50%.
    assert row["samples_per_second_per_gpu"] == pytest.approx(1250)
    assert row["throughput_source"].startswith("estimate: 31.00 GFLOP per sample at 50% of peak")
    # One epoch on 9 GPUs: 1e6 / (1250 x 9) / 3600 = 0.024691 h.
    assert row["epoch_hours"] == pytest.approx(1_000_000 / (1250 * 9) / 3600)
    # Cost per epoch: 1e6 / 1250 = 800 GPU-seconds = 0.2222 GPU-hours, at 2.0 per hour: 0.4444.
    assert row["cost_per_epoch"] == pytest.approx(800 / 3600 * 2.0)
    assert row["total_cost"] == pytest.approx(800 / 3600 * 2.0 * 10)
    assert row["total_hours"] == pytest.approx(1_000_000 / (1250 * 9) / 3600 * 10)

    assert "largest listed size within 15.00 GiB is 256" in row["memory_accounting"]
    assert "DDP adds 256.00 MiB of gradient buckets" in row["memory_accounting"]


def test_size_cluster_search_answers():
    trials, searches = t4_search_frames()
    spec = SizingSpec((SizingTarget(model=0, global_batch_size=1024, dataset_size=1_281_167, epochs=90),), prices={"T4": 0.35})
    flops = StepFlops(convolution_flops=24_270_000_000, matmul_flops=30_000_000)
    sizing = size_cluster(trials, searches, spec, headroom=Headroom(0.05), param_bytes={RESNET50: RESNET50_BYTES},
                          step_flops={RESNET50: flops})
    fp32 = row_of(sizing, precision="fp32")
    assert fp32["source"] == "search"
    assert fp32["limit_bytes"] == T4_LIMIT_BYTES
    # fp32: the search answered 128 (13,593,739,264 bytes). With DDP, 13,593,739,264 + 102,478,080
    # = 13,696,217,344 <= 14,533,001,216, so 128 still fits: ceil(1024 / 128) = 8 GPUs.
    assert fp32["max_batch_size"] == 128
    assert fp32["ddp_max_batch_size"] == 128
    assert fp32["gpus_needed"] == 8
    assert fp32["micro_batch_size"] == 128
    assert fp32["accumulation_steps_1gpu"] == 8
    # T4 has no TF32: 24.3e9 FLOPs at 8.1 TFLOPS FP32 take 3e-3 s, so 0.4 / 3e-3 = 133.3 samples/s.
    assert fp32["samples_per_second_per_gpu"] == pytest.approx(0.4 / (24.3e9 / 8.1e12))
    # Cost per epoch: 1,281,167 / 133.33 / 3600 x 0.35 = 0.934.
    assert fp32["cost_per_epoch"] == pytest.approx(1_281_167 / (0.4 / (24.3e9 / 8.1e12)) / 3600 * 0.35)

    fp16 = row_of(sizing, precision="fp16")
    # fp16: the answer 264 peaked at 14,510,194,688 bytes; plus 102,478,080 it needs 14,612,672,768,
    # above the limit. The next smaller probe, 64, needs 3,883,643,136: 64 per GPU under DDP.
    assert fp16["max_batch_size"] == 264
    assert fp16["ddp_max_batch_size"] == 64
    assert fp16["gpus_needed"] == 16  # 1024 / 64
    assert fp16["accumulation_steps_1gpu"] == 4  # ceil(1024 / 264) = 4 steps of 256
    assert fp16["micro_batch_size_1gpu"] == 256
    assert fp16["accumulation_steps_2gpu"] == 8  # each GPU needs 512 = 8 x 64
    assert "drops to 64" in fp16["note"]
    assert "search answer 264" in fp16["memory_accounting"]


def test_size_cluster_nothing_fits():
    point = TrialSpec("classification", "resnet50", 224, 8, "fp32", 10)
    small = Card("small-1GiB", GiB, 0, "inline")
    trials = results_frame(
        [trial_row(small, 0, 8, "oom", None, arch="resnet50", image_size=224, backend="simulated", search="batch_size")]
    )
    searches = search_frame(
        [
            SearchOutcome(SearchSpec(point, "batch_size", AutoRange(8, 64, 8)), small, "simulated", None, None,
                          GiB, 0, 1, (Probe(8, "oom", None, 1_189_085_184),), needed_bytes=1_189_085_184)
        ]
    )
    spec = SizingSpec((SizingTarget(model=0, global_batch_size=256),))
    row = row_of(size_cluster(trials, searches, spec, headroom=Headroom(), param_bytes={RESNET50: RESNET50_BYTES}), card="small-1GiB")
    assert pd.isna(row["max_batch_size"])
    assert pd.isna(row["gpus_needed"])
    assert pd.isna(row["accumulation_steps_1gpu"])
    assert row["note"] == "nothing fits: the smallest size needs 1.11 GiB"


def test_size_cluster_without_parameter_bytes():
    spec = SizingSpec((SizingTarget(model=0, global_batch_size=1024),))
    row = row_of(size_cluster(listed_trials(), None, spec, headroom=Headroom(nbytes=GiB), param_bytes={}), card="card-16GiB")
    assert row["max_batch_size"] == 256
    assert pd.isna(row["ddp_max_batch_size"])
    # 1024 > 256 needs more than one GPU, and without DDP accounting no count is given.
    assert pd.isna(row["gpus_needed"])
    assert row["accumulation_steps_1gpu"] == 4
    assert pd.isna(row["accumulation_steps_2gpu"])
    assert row["note"] == f"no parameter bytes for {RESNET18}: DDP is not accounted"
    assert row["throughput_source"] == "no peak throughput for card-16GiB: add it under sizing.peak_tflops"


def test_size_cluster_measured_throughput():
    local = Card("NVIDIA A100-SXM4-40GB", 40 * GiB, 500 * MiB, "local")
    rows = [
        trial_row(local, 0, 64, "fits", 5 * GiB, backend="measured"),
        trial_row(local, 1, 128, "fits", 9 * GiB, backend="measured"),
    ]
    trials = results_frame(rows).assign(samples_per_second=[900.0, 1000.0])
    spec = SizingSpec((SizingTarget(model=0, global_batch_size=128, dataset_size=100_000),), prices={local.name: 3.0})
    row = row_of(size_cluster(trials, None, spec, headroom=Headroom(), param_bytes={RESNET18: 10**8}), card=local.name)
    # 128 fits one GPU, so the measured 1000 samples/s at batch size 128 is used.
    assert row["gpus_needed"] == 1
    assert row["samples_per_second_per_gpu"] == 1000.0
    assert row["throughput_source"] == "measured at batch size 128"
    # 100,000 samples at 1000 samples/s: 100 s = 0.02778 h, at 3.0 per hour: 0.0833 per epoch.
    assert row["epoch_hours"] == pytest.approx(100 / 3600)
    assert row["cost_per_epoch"] == pytest.approx(100 / 3600 * 3.0)
    assert pd.isna(row["total_cost"])  # no epochs given


def test_size_cluster_ignores_simulated_speed():
    trials = listed_trials().assign(samples_per_second=1.0)  # CPU speed of an emulated trial
    spec = SizingSpec((SizingTarget(model=0, global_batch_size=64),))
    row = row_of(size_cluster(trials, None, spec, headroom=Headroom(), param_bytes={RESNET18: 0}), card="card-16GiB")
    assert pd.isna(row["samples_per_second_per_gpu"])


def test_size_cluster_target_narrowing():
    trials, searches = t4_search_frames()
    spec = SizingSpec(
        (
            SizingTarget(model=0, global_batch_size=512, precision="fp16"),
            SizingTarget(model=3, global_batch_size=512),
        )
    )
    sizing = size_cluster(trials, searches, spec, headroom=Headroom(0.05), param_bytes={RESNET50: RESNET50_BYTES},
                          step_flops={})
    narrowed = sizing[sizing["target"] == 0]
    assert list(narrowed["precision"]) == ["fp16"]
    missing = row_of(sizing, target=1)
    assert pd.isna(missing["card"])
    assert missing["note"] == "no trials of models[3], global batch size 512 with a fixed image size and no later stages"


# parameter bytes and FLOPs, counted on meta tensors ---------------------------------


def test_parameter_bytes_match_cpu_model():
    from fastai.vision.learner import create_vision_model
    from torchvision import models

    model = create_vision_model(models.resnet18, 10, pretrained=False)
    expected = 4 * sum(parameter.numel() for parameter in model.parameters())
    assert count_parameter_bytes("classification", "resnet18", 10, 64) == expected


def test_step_flops_resnet50_about_three_forwards():
    from torchvision.models import ResNet50_Weights

    flops = count_step_flops("classification", "resnet50", 10, 224)
    # torchvision lists 4.089 G multiply-adds per forward at 224 px: 8.178 GFLOP. The backward pass
    # costs two forwards, less the first convolution's input gradient, which nothing needs.
    forward = 2 * ResNet50_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9
    assert 2.9 * forward < flops.convolution_flops < 3.0 * forward
    assert 0 < flops.matmul_flops < 0.01 * flops.convolution_flops


def test_estimate_without_bf16_units():
    # A T4 has no BF16 tensor cores, so no bf16 estimate is given.
    estimate = estimate_samples_per_second(StepFlops(10**9, 0), peak_for("T4"), "bf16")
    assert estimate.samples_per_second is None
    assert estimate.source == "no bf16 peak throughput for this card"


# parse_sizing ----------------------------------------------------------------------

MODELS = [
    {"task": "classification", "arch": ["resnet18", "resnet50"], "image_size": 224, "batch_size": "auto", "dataset_size": 50000},
    {"task": "classification", "arch": "resnet18", "image_size": "auto", "batch_size": 16},
]


def parse(value, **kwargs):
    problems = []
    return parse_sizing(value, problems, **kwargs), problems


def test_parse_sizing_valid():
    spec, problems = parse(
        {
            "targets": [{"model": 0, "arch": "resnet50", "global_batch_size": 1024, "epochs": 90}],
            "prices": {"T4": 0.35},
            "utilization": "25%",
            "peak_tflops": {"A10G": {"fp16": 125}},
        },
        models=MODELS,
        cards=["T4", "A10G"],
    )
    assert problems == []
    # dataset_size comes from the model entry when the target leaves it out.
    assert spec.targets == (SizingTarget(0, 1024, 50000, 90, "resnet50"),)
    assert spec.prices == {"T4": 0.35}
    assert spec.utilization == 0.25
    assert spec.peak_tflops == {"A10G": {"fp16": 125.0}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([1], ["sizing is [1], but it must be a mapping with targets and, optionally, prices, utilization and peak_tflops"]),
        ({}, ["sizing.targets is missing: sizing needs a list of targets, each with model and global_batch_size"]),
        (
            {"targets": [], "utilisation": 0.4},
            [
                "sizing.utilisation is not a known key (did you mean 'utilization'?). "
                "Known keys: targets, prices, utilization, peak_tflops",
                "sizing.targets is [], but it must be a non-empty list of targets, each with model and global_batch_size",
            ],
        ),
        (
            {"targets": [{"model": 0}]},
            [
                "sizing.targets[0].global_batch_size is missing: a target needs the global batch size of its "
                "recipe (samples per optimizer step over all GPUs)"
            ],
        ),
        (
            {"targets": [{"model": 5, "global_batch_size": -8}]},
            [
                "sizing.targets[0].model is 5, but models has 2 entries (0 to 1)",
                "sizing.targets[0].global_batch_size is -8, but it must be a positive integer "
                "(samples per optimizer step over all GPUs)",
            ],
        ),
        (
            {"targets": [{"model": True, "global_batch_size": 8, "epochs": 0, "dataset_size": 1.5}]},
            [
                "sizing.targets[0].model is True, but it must be the index of an entry in models (an integer from 0)",
                "sizing.targets[0].dataset_size is 1.5, but it must be a positive integer (training samples per epoch)",
                "sizing.targets[0].epochs is 0, but it must be a positive number",
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8, "arch": "resnet05", "precision": "fp8", "image_size": 256}]},
            [
                "sizing.targets[0].precision is 'fp8', which is not a known precision. Use one of fp32, fp16, bf16",
                "sizing.targets[0].arch is 'resnet05', which models[0] does not list (did you mean 'resnet50'?). "
                "It lists: resnet18, resnet50",
                "sizing.targets[0].image_size is 256, which models[0] does not list. It lists: 224",
            ],
        ),
        (
            {"targets": [{"model": 1, "global_batch_size": 8}]},
            [
                "sizing.targets[0].model is 1, but models[1] searches image_size: sizing needs rows with a "
                "fixed image size, whose batch sizes were listed or searched"
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8, "size": 1}]},
            [
                "sizing.targets[0].size is not a known key. Known keys: model, global_batch_size, dataset_size, "
                "epochs, arch, image_size, precision"
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8}], "prices": {"A100-40G": 1.1, "T4": -1}},
            [
                "sizing.prices.A100-40G names no card of this grid (did you mean 'A100-40GB'?). Cards: T4, A100-40GB",
                "sizing.prices.T4 is -1, but it must be a positive number (price per card-hour)",
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8}], "prices": [0.35]},
            [
                "sizing.prices is [0.35], but it must be a mapping from card name to price per card-hour, "
                "for example {T4: 0.35, A100-40GB: 1.10}"
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8}], "utilization": 1.5},
            [
                "sizing.utilization is 1.5, but it must be a fraction of peak throughput above 0 and at most 1 "
                "(for example 0.4), or a percent (for example 40%)"
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8}], "peak_tflops": {"A10G": {"fp8": 250, "fp16": "fast"}}},
            [
                "sizing.peak_tflops.A10G.fp8 is not a known key. Known keys: fp32, tf32, fp16, bf16",
                "sizing.peak_tflops.A10G.fp16 is 'fast', but it must be a positive number (dense TFLOPS, without sparsity)",
            ],
        ),
        (
            {"targets": [{"model": 0, "global_batch_size": 8}], "peak_tflops": {"A10G": 125}},
            [
                "sizing.peak_tflops.A10G is 125, but it must be a mapping with some of fp32, tf32, fp16, bf16, "
                "for example {my-gpu: {fp32: 20, tf32: 80, fp16: 160, bf16: 160}}"
            ],
        ),
    ],
)
def test_parse_sizing_problems(value, expected):
    spec, problems = parse(value, models=MODELS, cards=["T4", "A100-40GB"])
    assert problems == expected
    assert spec is None


def test_parse_sizing_without_models_checks_less():
    # Without the models list, the model index and narrowing values cannot be checked against entries.
    spec, problems = parse({"targets": [{"model": 7, "global_batch_size": 8, "arch": "anything"}], "prices": {"X": 1}})
    assert problems == []
    assert spec.targets[0].model == 7
    assert spec.prices == {"X": 1.0}


def test_cost_independent_of_gpu_count():
    # Under linear scaling n GPUs take 1/n of the time at n times the hourly cost.
    from planner.throughput import cost_per_epoch, epoch_hours

    for gpus in (1, 2, 8):
        assert epoch_hours(3600, 1.0, gpus) * gpus * 2.0 == pytest.approx(cost_per_epoch(3600, 1.0, 2.0))
    assert math.isclose(cost_per_epoch(3600, 1.0, 2.0), 2.0)
