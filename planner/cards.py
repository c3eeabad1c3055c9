"""Cards: kinds of GPU with a memory size, from the catalog or written inline."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MiB = 1024**2
GiB = 1024**3

CardSource = Literal["catalog", "inline", "local"]


@dataclass(frozen=True)
class Card:
    """A kind of GPU that trials are planned for.

    ``memory_bytes`` is the total the driver reports (``total_memory`` in
    ``torch.cuda.get_device_properties``), not the marketing figure.
    ``overhead_bytes`` is memory a trial cannot use: the CUDA context and
    library workspaces that live outside PyTorch's allocator statistics.
    """

    name: str
    memory_bytes: int
    overhead_bytes: int = 0
    source: CardSource = "inline"

    @property
    def budget_bytes(self) -> int:
        """Bytes a trial's tensors may occupy on this card."""
        return max(self.memory_bytes - self.overhead_bytes, 0)


# The CUDA context with lazy module loading takes roughly 250-450 MiB outside
# the allocator, and cuBLAS keeps a workspace per handle (8 MiB by default,
# plus 1 MiB for cuBLASLt). 300 MiB + 9 MiB is the low end.
# NOTE: the context size varies with driver, CUDA version and loaded kernels;
# a low estimate makes the planner say "fits" a little too often.
DEFAULT_OVERHEAD_BYTES = 300 * MiB + 9 * MiB

# Memory as the driver reports it (torch's total_memory), in MiB.
# NOTE: these are the totals printed by torch on each card in public logs and
# may differ by a few MiB between driver versions and ECC settings.
_CATALOG_MIB = {
    "T4": 15_095,
    "L4": 22_478,
    "A10G": 22_564,
    "RTX-4090": 24_210,
    "V100-16GB": 16_151,
    "V100-32GB": 32_494,
    "A100-40GB": 40_339,
    "A100-80GB": 80_995,
    "H100-80GB": 81_008,
    "H200": 143_156,
}

CATALOG: dict[str, Card] = {
    name: Card(name, mib * MiB, DEFAULT_OVERHEAD_BYTES, "catalog")
    for name, mib in _CATALOG_MIB.items()
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
