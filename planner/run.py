"""Run a validated grid end to end: trials, the long table, the output file, the per-card tables."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import torch

from planner import driver
from planner.grid import Grid
from planner.journal import FINAL_STATUSES, ResultWriter, load_previous, trial_key
from planner.output import write_results
from planner.tables import card_tables, result_row, results_frame, search_frame, search_tables
from workers.results import TrialResult

logger = logging.getLogger("planner")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run_plan(
    grid: Grid,
    *,
    backend: driver.BackendChoice = "auto",
    address: str | None = None,
    workers: int | None = None,
    output: Path | None = None,
    resume: bool = False,
    report: Path | None = None,
    require_local: bool = True,
) -> int:
    """Run ``grid``, write the long table to ``output`` and print one table per card.

    Returns the CLI exit code. Whatever has finished is written even when the
    run is interrupted by SIGINT or SIGTERM (130) or fails inside the driver (1).
    With ``resume``, trials already in ``output`` (or its journal) with a
    final status and the same grid point and environment are not run again.
    """
    from planner.cli import (
        EXIT_FAILURE,
        EXIT_INTERRUPTED,
        EXIT_OK,
        format_card_table,
        format_progress,
        format_search_table,
        format_sizing,
    )

    previous = load_previous(output) if resume and output is not None else []
    done = {trial_key(row) for row in previous if row.get("status") in FINAL_STATUSES}
    if previous:
        logger.info("resuming: %d finished trials in %s are kept", len(done), output)
    writer = ResultWriter(output, previous=previous)
    outcomes: list = []

    def on_result(assignment: driver.Assignment, result: TrialResult, count: int, total: int) -> None:
        writer.add(result_row(assignment, result, torch_version=torch.__version__))
        logger.info(format_progress(assignment, result, count, total))

    def skip(assignment: driver.Assignment) -> bool:
        row = result_row(assignment, TrialResult(status="fits", backend=assignment.backend), torch_version=torch.__version__)
        return trial_key(row) in done

    code = EXIT_OK
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        driver.run_grid(
            grid,
            backend=backend,
            address=address,
            max_cpu_workers=workers,
            require_local=require_local,
            on_result=on_result,
            skip=skip if done else None,
            on_search=outcomes.append,
        )
    except KeyboardInterrupt:
        print(f"interrupted: {len(writer.rows)} finished trials are kept", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except driver.PlanError:
        raise
    except Exception as error:  # an internal failure: keep what finished, then report it
        logger.debug("the plan failed after %d trials", len(writer.rows), exc_info=True)
        print(f"error: the plan failed: {type(error).__name__}: {error}", file=sys.stderr)
        code = EXIT_FAILURE
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        writer.close()
        driver.shutdown()

    searches = None
    if outcomes:
        searches = search_frame(outcomes)
        if output is not None:
            path = search_output_path(output)
            write_results(searches, path)
            logger.info("wrote %d search answers to %s", len(searches), path)
        for card, table in search_tables(searches).items():
            print(format_search_table(card, searches, table, grid.headroom))
    if not writer.rows:
        return code
    frame = results_frame(writer.rows)
    if output is not None:
        logger.info("wrote %d trials to %s", len(frame), output)
    for card, table in card_tables(frame, headroom=grid.headroom).items():
        print(format_card_table(card, frame, table, grid.headroom))

    sizing = None
    if grid.sizing is not None:
        from planner.sizing import size_cluster

        sizing = size_cluster(frame, searches, grid.sizing, headroom=grid.headroom)
        print(format_sizing(sizing))
    if report is not None:
        from planner.report import write_report

        write_report(report, trials=frame, searches=searches, sizing=sizing, headroom=grid.headroom, grid=grid)
    return code


def search_output_path(output: Path) -> Path:
    """Return where the search answers go: ``out.parquet`` gives ``out.search.parquet``."""
    return output.with_name(f"{output.stem}.search{output.suffix}")
