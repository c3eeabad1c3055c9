"""Write a plan's results to a folder: the tables as CSV, a Markdown summary and a heatmap per card.

``write_report`` writes:

- ``trials.csv``: the long table, one row per trial;
- ``searches.csv`` and ``sizing.csv``, when there are search answers and a sizing table;
- ``table-CARD.csv``: each card's table of listed batch sizes, as printed;
- ``heatmap-CARD.png``: each card's peak memory by batch size and input size (pixels, tokens or columns);
- ``report.md``: per card, how many cards and what accumulation reach each
  sizing target, the search answers and the card's table, then the
  assumptions behind them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from planner.cards import GiB, format_bytes
from planner.grid import Grid, Headroom
from planner.sizing import GPU_COUNTS, SizingSpec, worst_status
from planner.tables import card_tables, cell_unit, search_tables
from planner.throughput import DEFAULT_UTILIZATION, peak_for

logger = logging.getLogger("planner")

REPORT_NAME = "report.md"

# Keys that split a card's trials into heatmap panels: every row value but the
# two axes. The optional keys are used where the long table has them.
_PANEL_KEYS = ["task", "arch", "precision", "classes"]
_OPTIONAL_PANEL_KEYS = ["fit", "later_stages", "grad_accumulation"]


def write_report(
    directory: str | Path,
    *,
    trials: pd.DataFrame,
    searches: pd.DataFrame | None = None,
    sizing: pd.DataFrame | None = None,
    headroom: Headroom = Headroom(),
    grid: Grid | None = None,
    spec: SizingSpec | None = None,
) -> list[Path]:
    """Write the report files into ``directory``, creating it if needed, and return their paths.

    ``sizing`` is the frame ``size_cluster`` returns. ``spec`` is the grid's
    sizing section, whose prices and utilization the summary states. When it
    is None, ``grid.sizing`` is used where the grid has that attribute.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = spec if spec is not None else getattr(grid, "sizing", None)
    searches = searches if searches is not None and len(searches) else None
    sizing = sizing if sizing is not None and len(sizing) else None
    written: list[Path] = []

    written.append(_write_csv(trials, directory / "trials.csv"))
    if searches is not None:
        written.append(_write_csv(searches, directory / "searches.csv"))
    if sizing is not None:
        written.append(_write_csv(sizing, directory / "sizing.csv"))

    cards = _card_order(trials, grid)
    names = _file_names(cards)
    tables = card_tables(trials, headroom=headroom) if len(trials) else {}
    for card, table in tables.items():
        written.append(_write_csv(table.reset_index(), directory / f"table-{names[card]}.csv"))
    heatmaps: dict[str, Path] = {}
    for card in cards:
        path = directory / f"heatmap-{names[card]}.png"
        if plot_heatmap(trials[trials["card"] == card], card, headroom, path):
            heatmaps[card] = path
            written.append(path)

    summary = _summary(trials, searches, sizing, headroom, grid, spec, cards, tables, heatmaps)
    report = directory / REPORT_NAME
    report.write_text(summary)
    written.append(report)
    logger.info("wrote the report to %s (%d files)", directory, len(written))
    return written


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _card_order(trials: pd.DataFrame, grid: Grid | None) -> list[str]:
    """Return the cards with trials in the order the grid lists them, then the others (local GPUs) by trial id.

    Without the grid, cards are ordered by trial id, as in the per-card tables.
    """
    if not len(trials):
        return []
    by_trial = [str(card) for card in trials.groupby("card")["trial"].min().sort_values().index]
    listed = [card.name for card in grid.cards if card.name in by_trial] if grid is not None else []
    return listed + [card for card in by_trial if card not in listed]


def _file_names(cards: Sequence[str]) -> dict[str, str]:
    """Map each card name to a file-name part of letters, digits, dots, dashes and underscores, unique per card."""
    names: dict[str, str] = {}
    for card in cards:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", card).strip("-.") or "card"
        candidate, number = name, 2
        while candidate in names.values():
            candidate, number = f"{name}-{number}", number + 1
        names[card] = candidate
    return names


# the heatmaps ------------------------------------------------------------------


def plot_heatmap(trials: pd.DataFrame, card: str, headroom: Headroom, path: Path) -> bool:
    """Plot one card's peak memory by batch size and input size into a PNG, one panel per task, arch and precision.

    Cells are coloured by peak GiB on a scale from 0 to the card's memory.
    OOM cells are hatched and labelled OOM, failed trials ERR, and a fitting
    cell above the headroom limit gets a red border. Listed trials and
    search probes both appear. Returns False when the card has no trials.
    """
    if not len(trials):
        return False
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    memory_bytes = int(trials["card_memory_bytes"].iloc[0])
    overhead = trials["card_overhead_bytes"].iloc[0]
    limit_bytes = memory_bytes - (int(overhead) if pd.notna(overhead) else 0) - headroom.bytes_for(memory_bytes)
    panel_keys = [*_PANEL_KEYS, *(key for key in _OPTIONAL_PANEL_KEYS if key in trials)]
    cells = _cells(trials.assign(input_size=[_input_size(row) for row in trials.itertuples()]), panel_keys)
    panels = list(cells.groupby(panel_keys, dropna=False, sort=True))

    columns = max(len(panel["batch_size"].unique()) for _, panel in panels)
    # Row labels longer than an image size's ("128 px") and panel titles wider
    # than their panel need room, or the colour bar covers them: about 0.07 in
    # per character at these font sizes.
    label = max(len(size[1]) for size in cells["input_size"])
    title = max(len(_panel_title(dict(zip(panel_keys, keys)))) for keys, _ in panels)
    width = min(max(4.5, 0.75 * columns + 2.5 + 0.07 * max(0, label - 8), 0.07 * title + 1.6), 24.0)
    heights = [max(1.7, 0.45 * len(panel["input_size"].unique()) + 1.3) for _, panel in panels]
    # 0.8 in above the panels leaves room for the two-line title.
    figure = Figure(figsize=(width, sum(heights) + 0.8), dpi=100, layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    norm = Normalize(vmin=0.0, vmax=memory_bytes / GiB)
    colormap = "viridis"
    image = None
    for axis, (keys, panel) in zip(axes, panels):
        batch_sizes = sorted(int(size) for size in panel["batch_size"].unique())
        input_sizes = sorted(panel["input_size"].unique())  # (rank, label) pairs
        values = [[math.nan] * len(batch_sizes) for _ in input_sizes]
        for cell in panel.itertuples():
            y, x = input_sizes.index(cell.input_size), batch_sizes.index(int(cell.batch_size))
            if cell.status == "fits" and pd.notna(cell.peak_bytes):
                values[y][x] = cell.peak_bytes / GiB
        image = axis.imshow(values, cmap=colormap, norm=norm, aspect="auto", origin="lower")
        font = 8 if len(batch_sizes) <= 12 else 6
        for cell in panel.itertuples():
            y, x = input_sizes.index(cell.input_size), batch_sizes.index(int(cell.batch_size))
            _draw_cell(axis, Rectangle, x, y, cell, limit_bytes, norm, font)
        axis.set_xticks(range(len(batch_sizes)), [str(size) for size in batch_sizes], fontsize=font)
        axis.set_yticks(range(len(input_sizes)), [label for _, label in input_sizes], fontsize=8)
        axis.set_xlabel("batch size", fontsize=8)
        axis.set_ylabel("input size", fontsize=8)
        axis.set_title(_panel_title(dict(zip(panel_keys, keys))), fontsize=9)
    figure.colorbar(image, ax=list(axes), label="peak GiB", shrink=0.9)
    figure.suptitle(
        f"{card}: {format_bytes(memory_bytes)}, limit {format_bytes(limit_bytes)}\n"
        f"headroom {headroom.describe()}; red border: peak above the limit",
        fontsize=9,
    )
    figure.savefig(path)
    return True


def _input_size(row: Any) -> tuple[int, str]:
    """Return a row's input size as a sort rank and a label naming every size key it sets.

    Pixels, tokens or columns rank the rows. The label also names the
    vocabulary, cardinality, layers and factory parameters, so rows that
    differ only in those stay apart.
    """
    parts, rank = [], 0
    if pd.notna(row.image_size):
        rank = int(row.image_size)
        parts.append(f"{rank} px")
    if pd.notna(row.seq_len):
        rank = int(row.seq_len)
        parts.append(f"{rank} tokens")
    if pd.notna(row.vocab_size):
        parts.append(f"vocab {int(row.vocab_size)}")
    if pd.notna(row.n_cont):
        rank = int(row.n_cont) + int(row.n_cat)
        parts.append(f"{int(row.n_cont)} cont, {int(row.n_cat)} cat x {int(row.cardinality)}, layers {row.layers}")
    if pd.notna(row.params):
        parts.append(str(row.params))
    return rank, ", ".join(parts) or "-"


def _panel_title(keys: dict[str, Any]) -> str:
    title = f"{keys['task']} {keys['arch']} {keys['precision']}"
    if pd.notna(keys.get("classes")):
        title += f", {int(keys['classes'])} classes"
    if pd.notna(keys.get("fit")) and keys["fit"] != "fit_one_cycle":
        title += f", {keys['fit']}"
    if pd.notna(keys.get("later_stages")):
        title += f", then {keys['later_stages']}"
    if pd.notna(keys.get("grad_accumulation")) and keys["grad_accumulation"] != 1:
        title += f", accumulating {keys['grad_accumulation']} batches"
    return title


def _cells(trials: pd.DataFrame, panel_keys: list[str]) -> pd.DataFrame:
    """Return one cell per panel, input size and batch size: the worst status and the highest peak over its trials."""
    keys = [*panel_keys, "input_size", "batch_size"]
    peak = trials["peak_reserved_bytes"].fillna(trials["peak_allocated_bytes"])
    frame = trials[[*keys, "status"]].assign(peak_bytes=peak)
    rows = []
    for values, group in frame.groupby(keys, dropna=False, sort=True):
        status = worst_status(group["status"])
        known = group["peak_bytes"].dropna()
        rows.append({**dict(zip(keys, values)), "status": status, "peak_bytes": int(known.max()) if len(known) else None})
    return pd.DataFrame(rows).astype({"peak_bytes": "Int64"})


def _draw_cell(axis, rectangle, x: int, y: int, cell: Any, limit_bytes: int, norm, font: int) -> None:
    if cell.status == "oom":
        axis.add_patch(rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="0.85", edgecolor="0.4", hatch="///", linewidth=0.5))
        axis.text(x, y, "OOM", ha="center", va="center", fontsize=font, fontweight="bold", color="0.15")
        return
    if cell.status != "fits":
        axis.add_patch(rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="white", edgecolor="0.4", linewidth=0.5))
        axis.text(x, y, "ERR", ha="center", va="center", fontsize=font, color="0.15")
        return
    if pd.isna(cell.peak_bytes):
        axis.text(x, y, "fits", ha="center", va="center", fontsize=font, color="0.15")
        return
    gib = cell.peak_bytes / GiB
    # Light text on the dark end of viridis, dark text on the light end.
    color = "white" if norm(gib) < 0.6 else "black"
    axis.text(x, y, f"{gib:.1f}", ha="center", va="center", fontsize=font, color=color)
    if cell.peak_bytes > limit_bytes:
        axis.add_patch(rectangle((x - 0.45, y - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=1.5))


# the Markdown summary -------------------------------------------------------------


def _summary(
    trials: pd.DataFrame,
    searches: pd.DataFrame | None,
    sizing: pd.DataFrame | None,
    headroom: Headroom,
    grid: Grid | None,
    spec: SizingSpec | None,
    cards: list[str],
    tables: dict[str, pd.DataFrame],
    heatmaps: dict[str, Path],
) -> str:
    source = grid.source if grid is not None else "the plan"
    lines = [f"# Capacity plan: {source}", ""]
    lines.append(
        f"{len(trials)} trials on {len(cards)} cards ({', '.join(cards) or 'none'})"
        + (f", {len(searches)} search answer{'' if len(searches) == 1 else 's'}" if searches is not None else "")
        + f". Headroom: {headroom.describe()}."
    )
    lines.append("")
    if sizing is not None:
        for note in sizing[sizing["card"].isna()]["note"].dropna():
            lines.append(f"- {note}")
        if sizing["card"].isna().any():
            lines.append("")

    for card in cards:
        lines += _card_section(card, trials, searches, sizing, headroom, tables.get(card), heatmaps.get(card))
    lines += _assumptions(trials, sizing, headroom, spec, cards)
    return "\n".join(lines).rstrip() + "\n"


def _card_section(
    card: str,
    trials: pd.DataFrame,
    searches: pd.DataFrame | None,
    sizing: pd.DataFrame | None,
    headroom: Headroom,
    table: pd.DataFrame | None,
    heatmap: Path | None,
) -> list[str]:
    rows = trials[trials["card"] == card]
    memory_bytes = int(rows["card_memory_bytes"].iloc[0])
    overhead = rows["card_overhead_bytes"].iloc[0]
    limit_bytes = memory_bytes - (int(overhead) if pd.notna(overhead) else 0) - headroom.bytes_for(memory_bytes)
    backends = ", ".join(sorted(str(backend) for backend in rows["backend"].dropna().unique()))
    lines = [
        f"## {card}",
        "",
        f"{format_bytes(memory_bytes)} ({backends}). Answers keep peak memory within {format_bytes(limit_bytes)}, "
        f"leaving {headroom.describe()} free.",
        "",
    ]
    card_sizing = sizing[sizing["card"] == card] if sizing is not None else None
    if card_sizing is not None and len(card_sizing):
        lines += ["### How many cards", ""]
        for row in card_sizing.itertuples():
            lines += answer_lines(row)
        lines.append("")
    if searches is not None and (searches["card"] == card).any():
        lines += ["### Largest size found by search", "", markdown_table(search_tables(searches)[card].reset_index()), ""]
    if table is not None:
        unit, _ = cell_unit(rows)
        lines += [f"### Listed batch sizes (peak {unit})", "", markdown_table(table.reset_index()), ""]
    if heatmap is not None:
        lines += [f"![{card}: peak memory by batch size and input size]({heatmap.name})", ""]
    return lines


def describe_row(row: Any) -> str:
    """Name a sizing row, for example ``classification resnet50 224 px fp32``, with its fit and accumulation where not the defaults."""
    name = f"{row.task} {row.arch} {row.image_size} px {row.precision}"
    if pd.notna(row.fit) and row.fit != "fit_one_cycle":
        name += f" {row.fit}"
    if pd.notna(row.grad_accumulation) and row.grad_accumulation != 1:
        name += f" accumulating {row.grad_accumulation} batches"
    return name


def answer_lines(row: Any) -> list[str]:
    """Format one sizing row: the answer line, then one nested line for accumulation and one for time and cost."""
    head = f"- target {row.target}, {describe_row(row)}, global batch {row.global_batch_size}"
    if pd.isna(row.max_batch_size):
        reason = row.note if pd.notna(row.note) else "nothing fits"
        return [f"{head}: does not fit ({reason})"]
    if pd.notna(row.gpus_needed):
        gpus = int(row.gpus_needed)
        answer = (
            f"{head}: {gpus} {'GPU' if gpus == 1 else 'GPUs'} x {row.micro_batch_size} per GPU, no accumulation "
            f"(global batch {row.effective_global_batch_size})"
        )
    else:
        answer = f"{head}: only 1 GPU with accumulation: no size fits with DDP's buckets"
    lines = [answer]

    plans = []
    for gpus in GPU_COUNTS:
        steps = getattr(row, f"accumulation_steps_{gpus}gpu")
        if pd.isna(steps):
            continue
        micro = getattr(row, f"micro_batch_size_{gpus}gpu")
        effective = getattr(row, f"effective_global_batch_size_{gpus}gpu")
        plans.append(f"{gpus} GPU{'' if gpus == 1 else 's'}: {steps} x {micro} (global {effective})")
    lines.append(f"  - accumulation steps x micro-batch: {'; '.join(plans)}")
    lines.append(f"  - memory: {row.memory_accounting}")
    if pd.notna(row.note):
        lines.append(f"  - note: {row.note}")
    lines.append(f"  - {_time_and_cost(row)}")
    return lines


def _time_and_cost(row: Any) -> str:
    if pd.isna(row.samples_per_second_per_gpu):
        return f"throughput unknown: {row.throughput_source}"
    parts = [f"{row.samples_per_second_per_gpu:,.0f} samples/s per GPU ({row.throughput_source})"]
    if pd.notna(row.epoch_hours):
        gpus = int(row.gpus_needed)
        parts.append(f"one epoch {row.epoch_hours:.2f} h on {gpus} {'GPU' if gpus == 1 else 'GPUs'}")
    if pd.notna(row.cost_per_epoch):
        cost = f"{row.cost_per_epoch:,.2f} per epoch at {row.price_per_gpu_hour:g} per card-hour"
        if pd.notna(row.total_cost):
            cost += f", {row.total_cost:,.2f} for {row.epochs:g} epochs ({row.total_hours:.1f} h)"
        parts.append(cost)
    elif pd.notna(row.epoch_hours) and pd.isna(row.price_per_gpu_hour):
        parts.append("no price for this card")
    return "; ".join(parts)


def _assumptions(
    trials: pd.DataFrame, sizing: pd.DataFrame | None, headroom: Headroom, spec: SizingSpec | None, cards: list[str]
) -> list[str]:
    lines = [
        "## Assumptions",
        "",
        f"- Headroom: every answer leaves {headroom.describe()} free.",
        "- Peak memory is peak reserved where the backend reports it, else peak allocated. The CPU backends "
        "(emulated, simulated) do not see cuDNN workspaces or NCCL buffers, so they underestimate.",
    ]
    if sizing is None:
        return lines + [""]
    utilization = spec.utilization if spec is not None else DEFAULT_UTILIZATION
    overrides = spec.peak_tflops if spec is not None else {}
    lines += [
        "- DDP: on more than one GPU, `torch.nn.parallel.DistributedDataParallel` keeps gradient buckets "
        "(25 MiB each by default, `bucket_cap_mb`) as large as all the gradients together, next to the "
        "gradients. `gradient_as_bucket_view=True` would make the gradients views into the buckets, but "
        "fastai's optimizer calls `detach_()` on each gradient in `zero_grad`, which such views reject. So "
        "each GPU's peak is the one-GPU peak a trial measured plus the parameters' fp32 bytes, and only "
        "sizes that ran count. NCCL's own buffers are not counted.",
        "- Gradient accumulation uses the fewest steps. The micro-batch is rounded up, so the effective "
        "global batch is the target or slightly more.",
        "- Throughput is measured where a trial on a real GPU recorded `samples_per_second`. Elsewhere it "
        "is an estimate: the FLOPs of one training step (forward and backward) per sample, counted with "
        "`torch.utils.flop_counter.FlopCounterMode` on meta tensors, divided by the card's dense peak at "
        f"{utilization:.0%} utilization (an assumption). In fp32, convolutions use TF32 where the card has "
        "it, as cuDNN does by default. Scaling over GPUs is assumed linear: all-reduce time is not modelled.",
        "- Cost per epoch = dataset size / samples per second per GPU / 3600 x price per card-hour, the "
        "same on any number of GPUs under linear scaling.",
    ]
    peaks = [(card, peak_for(card, overrides)) for card in cards]
    peaks = [(card, peak) for card, peak in peaks if peak is not None]
    if peaks:
        lines += ["", "Dense peak throughput used for the estimates, in TFLOPS:", ""]
        table = pd.DataFrame(
            [
                {
                    "card": card,
                    "fp32": _rate(peak.fp32_tflops),
                    "tf32": _rate(peak.tf32_tflops),
                    "fp16": _rate(peak.fp16_tflops),
                    "bf16": _rate(peak.bf16_tflops),
                    "source": peak.source,
                }
                for card, peak in peaks
            ]
        )
        lines.append(markdown_table(table))
    if spec is not None and spec.prices:
        lines += ["", "Prices per card-hour: " + ", ".join(f"{card} {price:g}" for card, price in spec.prices.items()) + "."]
        unused = sorted(set(spec.prices) - set(cards))
        if unused:
            lines.append(f"Prices for cards without trials, unused: {', '.join(unused)}.")
    return lines + [""]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def markdown_table(frame: pd.DataFrame) -> str:
    """Format a frame as a GitHub Markdown table, with missing values as empty cells."""
    def cell(value: Any) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(column) for column in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
