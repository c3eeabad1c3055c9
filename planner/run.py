"""Run a validated grid end to end: trials, the long table, the output file, the per-card tables."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from planner import driver
from planner.grid import Grid
from planner.output import write_results
from planner.tables import card_tables, result_row, results_frame
from workers.results import TrialResult

logger = logging.getLogger("planner")


def run_plan(
    grid: Grid,
    *,
    backend: driver.BackendChoice = "auto",
    address: str | None = None,
    workers: int | None = None,
    output: Path | None = None,
    require_local: bool = True,
) -> int:
    """Run ``grid``, write the long table to ``output`` and print one table per card.

    Returns the CLI exit code. Whatever has finished is written even when the
    run is interrupted (130) or fails inside the driver (1).
    """
    from planner.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, format_card_table, format_progress

    rows: list[dict] = []

    def on_result(assignment: driver.Assignment, result: TrialResult, done: int, total: int) -> None:
        rows.append(result_row(assignment, result, torch_version=torch.__version__))
        logger.info(format_progress(assignment, result, done, total))

    code = EXIT_OK
    try:
        driver.run_grid(
            grid,
            backend=backend,
            address=address,
            max_cpu_workers=workers,
            require_local=require_local,
            on_result=on_result,
        )
    except KeyboardInterrupt:
        print(f"interrupted: {len(rows)} finished trials are kept", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except driver.PlanError:
        raise
    except Exception as error:  # an internal failure: keep what finished, then report it
        logger.exception("the plan failed after %d trials", len(rows))
        print(f"error: the plan failed: {type(error).__name__}: {error}", file=sys.stderr)
        code = EXIT_FAILURE
    finally:
        driver.shutdown()

    if not rows:
        return code
    frame = results_frame(rows)
    if output is not None:
        write_results(frame, output)
        logger.info("wrote %d trials to %s", len(frame), output)
    for card, table in card_tables(frame).items():
        print(format_card_table(card, frame, table))
    return code
