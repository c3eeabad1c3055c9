"""Write the long table to CSV or Parquet, chosen by the file's extension."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pandas as pd

FORMATS = {".csv": "csv", ".parquet": "parquet"}


class OutputError(ValueError):
    """The output path cannot be written (bad input, exit code 2)."""


def check_output_path(path: str | Path) -> Path:
    """Check that ``path`` has a known extension and a writable folder, before any work starts."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OutputError(
            f"output file {str(path)!r} has the extension {path.suffix or '(none)'!r}. "
            f"Use .csv or .parquet"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {str(folder)!r} does not exist. Create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {str(folder)!r} is not writable. Choose another path")
    if path.is_dir():
        raise OutputError(f"output path {str(path)!r} is a folder. Give a file name ending in .csv or .parquet")
    return path


def write_results(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` to ``path`` atomically: readers see the old file or the whole new one."""
    path = Path(path)
    kind = FORMATS[path.suffix.lower()]
    # mkstemp would create the file with mode 0600. Mode 0666 less the umask is
    # what a plain open() gives, and O_EXCL never reuses an existing file.
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if kind == "csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a results file written by ``write_results`` back into a DataFrame."""
    path = Path(path)
    if FORMATS.get(path.suffix.lower()) == "parquet":
        return pd.read_parquet(path)
    from planner.tables import results_frame

    # Only an empty field is a missing value. By default pandas also reads text
    # such as "NA" or "None" (a card name or an error message) as missing.
    return results_frame(pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict("records"))
