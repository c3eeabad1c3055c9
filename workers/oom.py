"""Decide whether an exception is an out-of-memory error.

This is the only place that decides. Every other module calls ``is_out_of_memory``.
"""

from __future__ import annotations

import re

import torch

# Message fragments that mean the device or host ran out of memory, with where
# each comes from. Matched case-insensitively against the exception and every
# exception it was raised from or during.
_OOM_PATTERNS: tuple[tuple[str, str], ...] = (
    # c10/cuda/CUDACachingAllocator.cpp, raised as torch.OutOfMemoryError
    (r"CUDA out of memory", "PyTorch caching allocator"),
    # cudaErrorMemoryAllocation surfacing through C10_CUDA_CHECK
    (r"CUDA error: out of memory", "CUDA runtime"),
    # cuBLAS handle or workspace creation under memory pressure
    (r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS"),
    # cuDNN workspace allocation
    (r"CUDNN_STATUS_ALLOC_FAILED", "cuDNN"),
    # c10/core/CPUAllocator.cpp: "DefaultCPUAllocator: can't allocate memory"
    (r"DefaultCPUAllocator: (can't|not enough memory)", "PyTorch CPU allocator"),
    # the emulated backend's own message
    (r"Emulated card .* out of memory", "planner emulated card"),
)
_OOM_RE = re.compile("|".join(f"(?:{pattern})" for pattern, _ in _OOM_PATTERNS), re.IGNORECASE)


def _chain(error: BaseException):
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_out_of_memory(error: BaseException) -> bool:
    """Return True when ``error``, or an exception it wraps, is an out-of-memory error."""
    for link in _chain(error):
        if isinstance(link, (torch.OutOfMemoryError, MemoryError)):
            return True
        # Ray and fastai wrap the original exception and repeat its message.
        if isinstance(link, Exception) and _OOM_RE.search(str(link)):
            return True
    return False
