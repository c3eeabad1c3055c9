import pytest
import torch

from workers.oom import is_out_of_memory


class WrappedError(RuntimeError):
    """Stands for a framework's wrapper that keeps only the original message."""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("anything"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)"), True),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
        (WrappedError("Emulated card 'c' out of memory: tried to allocate 512 bytes"), True),
        (RuntimeError("CUDA error: device-side assert triggered"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 20x5)"), False),
        (ValueError("out of range"), False),
        (KeyError("memory"), False),
    ],
)
def test_is_out_of_memory(error, expected):
    assert is_out_of_memory(error) is expected


def test_is_out_of_memory_follows_cause():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("fit failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
