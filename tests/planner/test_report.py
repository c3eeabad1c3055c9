"""write_report writes the tables, the Markdown summary and one heatmap per card."""

import warnings

import pandas as pd
import pytest
from matplotlib.image import imread

from planner.cards import CATALOG, GiB, Card
from planner.grid import AutoRange, Headroom, SearchSpec, TrialSpec
from planner.report import REPORT_NAME, markdown_table, plot_heatmap, write_report
from planner.search import Probe, SearchOutcome
from planner.sizing import SIZING_COLUMNS, SizingSpec, SizingTarget, model_key, size_cluster
from planner.tables import results_frame, search_frame
from planner.throughput import StepFlops

warnings.filterwarnings("ignore", category=UserWarning)

INLINE = Card("card-16GiB", 16 * GiB, 0, "inline")
T4 = CATALOG["T4"]
# Peaks a simulated T4 recorded for resnet50 at 224 px in fp32 (examples/search.yaml, torch 2.14.1).
T4_PROBES = {8: 1_189_085_184, 64: 6_983_516_160, 128: 13_593_739_264, 136: 14_558_429_184, 144: 15_313_403_904}
T4_LIMIT_BYTES = 14_533_001_216


def trial_row(card: Card, trial: int, image_size: int, batch_size: int, status: str, peak_bytes: int | None, **values) -> dict:
    row = {
        "task": "classification",
        "arch": "resnet18",
        "image_size": image_size,
        "batch_size": batch_size,
        "precision": "fp32",
        "classes": 10,
        "card": card.name,
        "card_memory_bytes": card.memory_bytes,
        "card_overhead_bytes": card.overhead_bytes,
        "backend": "emulated",
        "fits": status == "fits",
        "status": status,
        "peak_allocated_bytes": peak_bytes,
        "peak_reserved_bytes": peak_bytes,
        "entry": 0,
        "trial": trial,
        "fit": "fit_one_cycle",
        "grad_accumulation": 1,
    }
    row.update(values)
    return row


def plan_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """An inline card with listed resnet18 sizes at 64 and 128 px, and a T4 batch size search for resnet50."""
    rows = [
        trial_row(INLINE, 0, 64, 32, "fits", 3 * GiB),
        trial_row(INLINE, 1, 64, 64, "fits", 5 * GiB),
        trial_row(INLINE, 2, 64, 128, "fits", 9 * GiB),
        trial_row(INLINE, 3, 64, 256, "fits", int(14.9 * GiB)),
        trial_row(INLINE, 4, 64, 512, "oom", None, oom_stage="backward"),
        trial_row(INLINE, 5, 128, 32, "fits", 11 * GiB),
        trial_row(INLINE, 6, 128, 64, "oom", None, oom_stage="train forward"),
    ]
    for index, (size, peak) in enumerate(T4_PROBES.items()):
        rows.append(trial_row(T4, 7 + index, 224, size, "fits", peak, arch="resnet50", entry=1, backend="simulated",
                              search="batch_size"))
    point = TrialSpec("classification", "resnet50", 224, 8, "fp32", 10, entry=1)
    outcome = SearchOutcome(
        search=SearchSpec(point, "batch_size", AutoRange(8, 2048, 8)),
        card=T4,
        backend="simulated",
        answer=128,
        answer_peak_bytes=T4_PROBES[128],
        limit_bytes=T4_LIMIT_BYTES,
        headroom_bytes=781_451_264,
        trials=len(T4_PROBES),
        probes=tuple(Probe(size, "fits", peak) for size, peak in T4_PROBES.items()),
    )
    return results_frame(rows), search_frame([outcome])


def plan_sizing(trials: pd.DataFrame, searches: pd.DataFrame, headroom: Headroom) -> tuple[pd.DataFrame, SizingSpec]:
    spec = SizingSpec(
        (
            SizingTarget(model=0, global_batch_size=1024, image_size=64),
            SizingTarget(model=1, global_batch_size=1024, dataset_size=1_281_167, epochs=90),
        ),
        prices={"card-16GiB": 2.0, "T4": 0.35},
    )
    resnet18 = model_key("classification", "resnet18", 10, 64)
    resnet50 = model_key("classification", "resnet50", 10, 224)
    sizing = size_cluster(
        trials,
        searches,
        spec,
        headroom=headroom,
        param_bytes={resnet18: GiB // 4, resnet50: 102_478_080},
        step_flops={resnet50: StepFlops(24_270_000_000, 30_000_000)},
    )
    return sizing, spec


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    trials, searches = plan_frames()
    headroom = Headroom(0.05)
    sizing, spec = plan_sizing(trials, searches, headroom)
    folder = tmp_path_factory.mktemp("report")
    paths = write_report(folder, trials=trials, searches=searches, sizing=sizing, headroom=headroom, spec=spec)
    return folder, paths, trials, sizing


def test_report_writes_expected_files(report):
    folder, paths, _, _ = report
    names = sorted(path.name for path in paths)
    # The T4 ran only search probes, so it has no table of listed sizes.
    assert names == sorted(
        [
            "trials.csv",
            "searches.csv",
            "sizing.csv",
            "table-card-16GiB.csv",
            "heatmap-card-16GiB.png",
            "heatmap-T4.png",
            REPORT_NAME,
        ]
    )
    assert all((folder / name).is_file() for name in names)


def test_report_csv_contents(report):
    folder, _, trials, sizing = report
    assert len(pd.read_csv(folder / "trials.csv")) == len(trials)
    assert list(pd.read_csv(folder / "sizing.csv").columns) == SIZING_COLUMNS
    assert len(pd.read_csv(folder / "sizing.csv")) == len(sizing)
    # The table's rows are card_tables' business (tests of planner.tables): here, that it is written.
    assert "max fitting batch size" in pd.read_csv(folder / "table-card-16GiB.csv").columns


def test_report_answer_lines(report):
    folder, _, _, _ = report
    text = (folder / REPORT_NAME).read_text()
    lines = text.splitlines()
    # card-16GiB: limit 16 GiB less 5% = 15.2 GiB; 256 peaks at 14.9 GiB, plus 0.25 GiB of DDP
    # buckets 15.15 GiB, still within: ceil(1024 / 256) = 4 GPUs, no accumulation.
    assert "- target 0, classification resnet18 64 px fp32, global batch 1024: 4 GPUs x 256 per GPU, no accumulation (global batch 1024)" in lines
    assert "  - accumulation steps x micro-batch: 1 GPU: 4 x 256 (global 1024); 2 GPUs: 2 x 256 (global 1024); 4 GPUs: 1 x 256 (global 1024); 8 GPUs: 1 x 128 (global 1024)" in lines
    # T4: the search answered 128; with 102,478,080 bytes of buckets 128 still fits: 1024 / 128 = 8 GPUs.
    assert "- target 1, classification resnet50 224 px fp32, global batch 1024: 8 GPUs x 128 per GPU, no accumulation (global batch 1024)" in lines
    # 24.3e9 FLOPs at 40% of 8.1 TFLOPS: 0.0075 s, 133.3 samples/s. One epoch on 8 GPUs:
    # 1,281,167 x 0.0075 s / 8 = 1,201 s = 0.33 h. Cost: 9,608.75 GPU-seconds = 2.669 GPU-hours
    # x 0.35 = 0.93 per epoch, 84.08 for 90 epochs (0.33 h x 90 = 30.0 h).
    assert (
        "  - 133 samples/s per GPU (estimate: 24.30 GFLOP per sample at 40% of peak (FP32)); one epoch 0.33 h on 8 GPUs; "
        "0.93 per epoch at 0.35 per card-hour, 84.08 for 90 epochs (30.0 h)"
    ) in lines
    assert "## card-16GiB" in lines
    assert "## T4" in lines
    assert "![T4: peak memory by batch size and input size](heatmap-T4.png)" in lines
    assert "| classification | resnet50 | image_size=224 | fp32 | batch_size | 128 | 12.66 | 5 | 8:fits 64:fits 128:fits 136:over-headroom 144:over-headroom |" in lines
    assert "Prices per card-hour: card-16GiB 2, T4 0.35." in lines
    assert "## Assumptions" in lines


@pytest.mark.parametrize(
    ("name", "size"),
    [
        # card-16GiB: 5 batch sizes (32 to 512) x 2 image sizes. Width max(4.5, 0.75 x 5 + 2.5) = 6.25 in,
        # height max(1.7, 0.45 x 2 + 1.3) = 2.2 in plus 0.8 in for the title: 625 x 300 px at 100 dpi.
        ("heatmap-card-16GiB.png", (300, 625)),
        # T4: 5 probed batch sizes x 1 image size: 6.25 in wide, 1.75 + 0.8 = 2.55 in high.
        ("heatmap-T4.png", (255, 625)),
    ],
)
def test_report_heatmap_dimensions(report, name, size):
    folder, _, _, _ = report
    pixels = imread(folder / name)
    assert pixels.shape[:2] == size
    # Not blank: a heatmap has many colours.
    assert len({tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[2])[::7]}) > 20


def test_heatmap_single_cell(tmp_path):
    local = Card("NVIDIA A100 (local)", 40 * GiB, 0, "local")
    trials = results_frame([trial_row(local, 0, 224, 64, "oom", None, backend="measured")])
    path = tmp_path / "one.png"
    assert plot_heatmap(trials, local.name, Headroom(), path)
    # One cell: width max(4.5, 0.75 + 2.5) = 4.5 in, height max(1.7, 0.45 + 1.3) + 0.8 = 2.55 in.
    assert imread(path).shape[:2] == (255, 450)


def test_heatmap_text_tabular_and_factory_rows(tmp_path):
    text = dict(task="text_classifier", arch="AWD_LSTM", classes=2, vocab_size=60000)
    table = dict(task="tabular", arch="TabularModel", n_cont=8, n_cat=4, cardinality=10, layers="200,100")
    factory = dict(task="learner", arch="reviews:make", classes=None, params="max_tokens=2000")
    trials = results_frame(
        [
            trial_row(INLINE, 0, None, 16, "fits", 2 * GiB, seq_len=256, **text),
            trial_row(INLINE, 1, None, 16, "oom", None, seq_len=1024, **text),
            trial_row(INLINE, 2, None, 256, "fits", GiB, **table),
            # Differs from the row above only in cardinality: a row of its own.
            trial_row(INLINE, 3, None, 256, "oom", None, **{**table, "cardinality": 5000}),
            trial_row(INLINE, 4, None, 64, "fits", 3 * GiB, **factory),
        ]
    )
    path = tmp_path / "tasks.png"

    assert plot_heatmap(trials, INLINE.name, Headroom(), path)
    # One batch size per panel, and the 36-character label "8 cont, 4 cat x 5000, layers 200,100":
    # 0.75 + 2.5 + 0.07 x (36 - 8) = 5.21 in wide. Three panels: 2 sequence lengths and
    # 2 cardinalities (0.9 + 1.3 = 2.2 in each), one factory point (1.75 in), plus 0.8 in.
    assert imread(path).shape[:2] == (695, 521)


def test_report_without_sizing_or_searches(tmp_path):
    local = Card("NVIDIA A100 (local)", 40 * GiB, 0, "local")
    trials = results_frame([trial_row(local, 0, 224, 64, "fits", 7 * GiB, backend="measured")])
    paths = write_report(tmp_path / "out", trials=trials)
    # The card name becomes a file name of letters, digits and dashes.
    assert sorted(path.name for path in paths) == [
        "heatmap-NVIDIA-A100-local.png",
        REPORT_NAME,
        "table-NVIDIA-A100-local.csv",
        "trials.csv",
    ]
    text = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "### How many cards" not in text
    assert "## NVIDIA A100 (local)" in text


def test_report_target_without_trials(tmp_path):
    trials, searches = plan_frames()
    spec = SizingSpec((SizingTarget(model=9, global_batch_size=64),))
    sizing = size_cluster(trials, searches, spec, headroom=Headroom(), param_bytes={}, step_flops={})
    write_report(tmp_path, trials=trials, searches=searches, sizing=sizing, spec=spec)
    lines = (tmp_path / REPORT_NAME).read_text().splitlines()
    assert "12 trials on 2 cards (card-16GiB, T4), 1 search answer. Headroom: none." in lines
    assert "- no trials of models[9], global batch size 64 with a fixed image size and no later stages" in lines
    assert "### How many cards" not in lines


def test_markdown_table_escapes_pipes():
    frame = pd.DataFrame({"a": ["x|y", None], "b": [1, 2]})
    assert markdown_table(frame) == "| a | b |\n|---|---|\n| x\\|y | 1 |\n|  | 2 |"
