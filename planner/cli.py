"""Command line: ``python -m planner [GRID] [-o OUT] [--address ADDR] [--backend ...]``.

Exit codes: 0 when the plan completed (an OOM is a result, not a failure),
1 for an internal failure, 2 for bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import pandas as pd

from planner.cards import format_bytes
from planner.driver import Assignment, PlanError
from planner.grid import Grid, GridError, Headroom, load_grid, parse_grid
from planner.output import OutputError, check_output_path
from planner.tables import cell_unit
from workers.results import TrialResult

logger = logging.getLogger("planner")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m planner",
        description=(
            "Run a grid of fastai fits, each stopped after a few batches, and report which "
            "batch size, image size and architecture fit into each card's memory."
        ),
    )
    parser.add_argument(
        "grid",
        nargs="?",
        help="grid file (YAML). Without it, the embedded default grid runs",
    )
    parser.add_argument("-o", "--output", help="write the long table, one row per trial, to this .csv or .parquet file")
    parser.add_argument("--address", help="Ray cluster to join, for example ray://head:10001 or auto. Default: start a local one")
    parser.add_argument(
        "--backend",
        choices=["auto", "measured", "emulated", "simulated"],
        default="auto",
        help="measured: real GPUs only (card 'local'). emulated: every card computed on the CPU "
        "with its memory enforced. simulated: every card traced with fake tensors, nothing computed. "
        "auto (default): measure local GPUs, simulate catalog cards, emulate inline cards "
        "unless they set their own backend",
    )
    parser.add_argument("--workers", type=int, help="maximum number of CPU actors for emulated and simulated cards (default: one per free CPU)")
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write the tables as CSV, a Markdown summary with the cluster sizing, and a PNG heatmap per card into DIR",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the trials already in the output file (and its journal) and run only the others",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress line per trial")
    return parser


def check_report_folder(folder: str) -> Path:
    """Check that the report folder exists and is writable, or can be created, before any work."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--report {folder!r} is a file, not a folder. Give a folder for the report files")
    existing = path if path.exists() else next((parent for parent in path.parents if parent.exists()), Path("."))
    if not os.access(existing, os.W_OK):
        raise OutputError(f"--report {folder!r} cannot be written: {str(existing)!r} is not writable")
    return path


def load_default_grid() -> Grid:
    """Load the grid embedded in the package."""
    text = resources.files("planner").joinpath("default_grid.yaml").read_text()
    return parse_grid(text, source="default grid")


def format_progress(assignment: Assignment, result: TrialResult, done: int, total: int) -> str:
    """Format the one-line progress report of a finished trial."""
    spec = assignment.spec
    point = spec.describe()
    if result.status == "fits":
        outcome = f"fits, peak allocated {format_bytes(result.peak_allocated_bytes)}"
        if result.peak_reserved_bytes is not None:
            outcome += f", reserved {format_bytes(result.peak_reserved_bytes)}"
    elif result.status == "oom":
        outcome = f"OOM in {result.oom_stage}"
    else:
        outcome = f"error: {result.error}"
    counter = f"[{done}/{total}]" if total else f"[probe {done}, {assignment.search} search]"
    return f"{counter} {assignment.card.name} ({assignment.backend}) {point}: {outcome} ({result.seconds:.1f} s)"


def format_search_table(card: str, frame: pd.DataFrame, table: pd.DataFrame, headroom: Headroom) -> str:
    """Format one card's search answers with a header naming its memory and the headroom left."""
    rows = frame[frame["card"] == card]
    memory = int(rows["card_memory_bytes"].iloc[0])
    limit = int(rows["limit_bytes"].iloc[0])
    backends = ", ".join(sorted(rows["backend"].dropna().unique()))
    header = (
        f"{card}: largest size that fits ({backends}), within {format_bytes(limit)} of {format_bytes(memory)}, "
        f"headroom {headroom.describe()}"
    )
    lines = [header, table.to_string()]
    for warning in rows["warning"].dropna():
        lines.append(f"warning: {warning}")
    for row in rows[rows["error"].notna()].itertuples():
        lines.append(f"ERR {row.task} {row.arch} {row.fixed}: {row.error}")
    return "\n".join(lines) + "\n"


def format_sizing(sizing: pd.DataFrame) -> str:
    """Format the cluster sizing per card: how many GPUs and what accumulation reach each target."""
    from planner.report import answer_lines

    lines = ["Cluster sizing"]
    for note in sizing[sizing["card"].isna()]["note"].dropna():
        lines.append(f"- {note}")
    for card in sizing["card"].dropna().unique():
        lines.append(f"{card}:")
        for row in sizing[sizing["card"] == card].itertuples():
            lines += [f"  {line}" for line in answer_lines(row)]
    return "\n".join(lines) + "\n"


def format_card_table(card: str, frame: pd.DataFrame, table: pd.DataFrame, headroom: Headroom | None = None) -> str:
    """Format one card's table with a header naming its memory and how it was measured."""
    rows = frame[frame["card"] == card]
    memory = int(rows["card_memory_bytes"].iloc[0])
    overhead = int(rows["card_overhead_bytes"].iloc[0])
    backends = ", ".join(sorted(rows["backend"].dropna().unique()))
    measured = "peak reserved" if rows["peak_reserved_bytes"].notna().any() else "peak allocated"
    unit, _ = cell_unit(rows)
    header = (
        f"{card}: {format_bytes(memory)}, {format_bytes(memory - overhead)} for trials ({backends}); "
        f"cells are {measured} in {unit}"
    )
    if headroom is not None and (headroom.fraction or headroom.nbytes):
        header += f"; the last column leaves {headroom.describe()} free"
    with pd.option_context("display.max_columns", None, "display.width", 200):
        return f"{header}\n{table.to_string()}\n"


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run the planner from the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet)

    # Validate everything the user gave before any Ray or GPU work.
    try:
        grid = load_grid(args.grid) if args.grid else load_default_grid()
        if not args.grid and args.backend in ("emulated", "simulated"):
            grid = dataclasses.replace(grid, local=False)
        output = check_output_path(args.output) if args.output else None
        report = check_report_folder(args.report) if args.report else None
        if args.resume and output is None:
            raise PlanError("--resume needs -o/--output: the file whose finished trials are kept")
        if args.address is not None:
            from planner.driver import check_address

            check_address(args.address)
        if args.workers is not None and args.workers < 1:
            raise PlanError(f"--workers is {args.workers}, but it must be at least 1")
        from planner.driver import check_backend

        check_backend(grid, args.backend)
    except (GridError, OutputError, PlanError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from planner.run import run_plan

    try:
        # The default grid lists 'local' for GPU machines and still runs without one.
        return run_plan(
            grid,
            backend=args.backend,
            address=args.address,
            workers=args.workers,
            output=output,
            resume=args.resume,
            report=report,
            require_local=bool(args.grid),
        )
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
