"""Cards: kinds of GPU with a memory size, from the catalog or written inline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from planner.catalog import CATALOG_CARDS

MiB = 1024**2
GiB = 1024**3

CardSource = Literal["catalog", "inline", "local"]

# Memory of a card with room for any trial (1 PiB), to measure what a trial needs.
UNLIMITED_MEMORY_BYTES = 2**50


@dataclass(frozen=True)
class Card:
    """A kind of GPU that trials are planned for.

    ``memory_bytes`` is the total the driver reports (``total_memory`` in
    ``torch.cuda.get_device_properties``), not the marketing figure.
    ``overhead_bytes`` is memory outside PyTorch's allocator that a trial
    cannot use: the CUDA context. ``workspace_bytes`` is the cuBLAS workspace
    of one handle, which PyTorch allocates through its caching allocator, so
    a measured trial sees it and the emulated and simulated backends add it.
    """

    name: str
    memory_bytes: int
    overhead_bytes: int = 0
    source: CardSource = "inline"
    workspace_bytes: int = 0
    compute_capability: tuple[int, int] | None = None
    backend: str | None = None  # an inline card's own backend choice, if any

    @property
    def budget_bytes(self) -> int:
        """Bytes PyTorch's allocator may reserve on this card for a trial."""
        return max(self.memory_bytes - self.overhead_bytes, 0)


# An estimate of the CUDA context of a GPU Ray finds, before its compute
# capability is known: the catalog's figure for compute capability 8.x.
DEFAULT_OVERHEAD_BYTES = 400 * MiB

CATALOG: dict[str, Card] = {
    name: Card(
        name,
        entry.memory_bytes,
        entry.cuda_context_bytes,
        "catalog",
        entry.cublas_workspace_bytes,
        entry.compute_capability,
    )
    for name, entry in CATALOG_CARDS.items()
}

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: int | str) -> int:
    """Parse a memory size such as ``4GiB``, ``40GB``, ``512 MiB`` or ``1024`` into bytes.

    Raises ``ValueError`` with the allowed forms when the value does not parse
    or is not positive.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory size")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _MEMORY_RE.match(value)):
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ValueError(f"{value!r} is not a memory size")
    if unit not in _UNITS:
        raise ValueError(f"{value!r} has an unknown unit {unit!r}")
    size = round(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive memory size")
    return size


def format_bytes(size: int | float | None) -> str:
    """Format a byte count in IEC units for display (``1.50 GiB``)."""
    if size is None or size != size:  # None or NaN
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"
