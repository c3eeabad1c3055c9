"""Catalog of GPU cards: the memory each card reports to PyTorch and what a trial cannot use.

``memory_bytes`` is ``torch.cuda.get_device_properties(i).total_memory``, the
total the driver reports to PyTorch, not the marketing size. On a full GPU
nvidia-smi's "Total" is larger because it includes memory the driver keeps for
itself: one Colab T4 shows 15360 MiB in nvidia-smi and 15095 MiB in torch. So
every full-GPU figure here comes from torch output. On MIG slices torch and
nvidia-smi agree (see ``_A100_MIG_SOURCES``).

The total on one card changes with the driver version and the cloud image, by
up to a few hundred MiB. Each entry keeps the lowest figure found with a
source, because a total that is too high makes the planner say "fits" for a
run that runs out of memory.

Three kinds of printed figure are used, converted to bytes as follows:

- torch's ``_CudaDeviceProperties`` repr prints ``total_memory=NMB`` with
  N = ``totalGlobalMem // 2**20`` (pytorch/pytorch torch/csrc/cuda/Module.cpp),
  so the total is N MiB or up to 1 MiB more. It is stored as N MiB.
- Ultralytics prints ``CUDA:0 (<name>, NMiB)`` with N =
  ``total_memory / 2**20`` formatted as ``:.0f`` (ultralytics
  ultralytics/utils/torch_utils.py, ``select_device``), so N is within 0.5 MiB.
  It is stored as N MiB.
- PyTorch's out-of-memory error prints "GPU 0 has a total capacity of X GiB"
  with X rounded to two decimals (``format_size`` in pytorch/pytorch
  c10/cuda/CUDACachingAllocator.cpp). That total comes from
  ``cudaMemGetInfo``, which returns the same number as ``total_memory``
  (both returned 50,865,307,648 bytes on an RTX 6000 Ada with PyTorch 2.10).
  ``_oom_capacity_lower_bound_bytes`` stores the lowest total the rounded
  figure allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

BYTES_PER_KIB = 2**10
BYTES_PER_MIB = 2**20
BYTES_PER_GIB = 2**30


@dataclass(frozen=True)
class CatalogCard:
    """One kind of GPU, or one MIG slice of a GPU, with the memory a trial can plan for.

    ``cuda_context_bytes`` and ``cublas_workspace_bytes`` are the same for
    every card of one compute capability. ``estimated`` is True when
    ``memory_bytes`` is not a figure someone reported from a real card.
    ``sources`` names where each figure comes from: memory, compute
    capability, cuBLAS workspace and CUDA context, in that order.
    """

    name: str
    memory_bytes: int
    compute_capability: tuple[int, int]
    cuda_context_bytes: int
    cublas_workspace_bytes: int
    estimated: bool
    sources: tuple[str, ...]

    @property
    def overhead_bytes(self) -> int:
        """Bytes a trial cannot use: the CUDA context plus one cuBLAS handle's workspaces."""
        return self.cuda_context_bytes + self.cublas_workspace_bytes


def _mib(mebibytes: int) -> int:
    return mebibytes * BYTES_PER_MIB


def _oom_capacity_lower_bound_bytes(capacity_gib: str) -> int:
    """Return the lowest whole-MiB total that PyTorch prints as ``capacity_gib`` GiB.

    The out-of-memory message rounds the total to two decimals, so a printed
    "14.56" means at least 14.555 GiB. The result is that bound rounded up to
    whole MiB, which still prints as "14.56".
    """
    lower_bound_mib = (Decimal(capacity_gib) - Decimal("0.005")) * 1024
    return int(lower_bound_mib.to_integral_value(rounding=ROUND_CEILING)) * BYTES_PER_MIB


# PyTorch's default cuBLAS workspace for each (handle, stream) pair, from
# parseChosenWorkspaceSize in aten/src/ATen/cuda/CublasHandlePool.cpp, read at
# pytorch/pytorch commit 26a39059ec58: ":4096:2:16:8" (two 4096 KiB chunks and
# eight 16 KiB chunks) by default, and 32 MiB on compute capability 9.0 only.
# CUBLAS_WORKSPACE_CONFIG overrides both.
CUBLAS_WORKSPACE_DEFAULT_BYTES = 4096 * BYTES_PER_KIB * 2 + 16 * BYTES_PER_KIB * 8
CUBLAS_WORKSPACE_SM90_BYTES = 4096 * BYTES_PER_KIB * 8

# The cuBLASLt workspace for each (handle, stream) pair: 1024 KiB by default
# (parseCUDABlasLtWorkspaceSize, same file and commit), overridden by
# CUBLASLT_WORKSPACE_SIZE. PyTorch allocates it apart from the cuBLAS
# workspace unless TORCH_CUBLASLT_UNIFIED_WORKSPACE=1 is set.
CUBLASLT_WORKSPACE_DEFAULT_BYTES = 1024 * BYTES_PER_KIB

_CUBLAS_WORKSPACE_SOURCE = (
    "pytorch/pytorch aten/src/ATen/cuda/CublasHandlePool.cpp at commit 26a39059ec58 "
    "(parseChosenWorkspaceSize, parseCUDABlasLtWorkspaceSize)"
)


def cublas_workspace_bytes(compute_capability: tuple[int, int]) -> int:
    """Return the default cuBLAS plus cuBLASLt workspace of one PyTorch handle.

    NOTE: PyTorch allocates both workspaces through its caching allocator, so
    they appear in ``torch.cuda.memory_allocated``. Each thread also gets its
    own handle, and autograd runs the backward pass on a thread of its own, so
    a training step usually uses two sets of workspaces.
    """
    if compute_capability == (9, 0):
        return CUBLAS_WORKSPACE_SM90_BYTES + CUBLASLT_WORKSPACE_DEFAULT_BYTES
    return CUBLAS_WORKSPACE_DEFAULT_BYTES + CUBLASLT_WORKSPACE_DEFAULT_BYTES


# Estimates of the CUDA context outside PyTorch's allocator: driver state and
# the kernels loaded so far, with CUDA_MODULE_LOADING=LAZY, which PyTorch sets
# by default since 1.13. One report measured 287,047,680 bytes (274 MiB) after
# one small tensor on an unnamed GPU. A PyTorch maintainer gives "~300MB" and
# "around 400MB". An RTX 6000 Ada (compute capability 8.9) with PyTorch
# 2.10+cu130 showed 426 MiB in nvidia-smi.
# NOTE: these are estimates. The context grows as cuBLAS and cuDNN kernels
# load and varies with the driver and CUDA version. No figure was found for
# Hopper, so 500 MiB for 9.0 is a guess that follows the trend.
_CUDA_CONTEXT_ESTIMATE_BYTES = {
    (7, 0): _mib(300),
    (7, 5): _mib(300),
    (8, 0): _mib(400),
    (8, 6): _mib(400),
    (8, 9): _mib(430),
    (9, 0): _mib(500),
}

_CUDA_CONTEXT_SOURCES = (
    "https://github.com/pytorch/pytorch/pull/86509 (lazy module loading by default: "
    "287,047,680 bytes in use after one tensor, 666,632,192 bytes without it)",
    "https://github.com/pytorch/pytorch/issues/107667 and "
    "https://github.com/pytorch/pytorch/issues/109888 (context ~300MB and ~400MB)",
    "https://github.com/unslothai/unsloth-zoo/pull/1053 "
    "(426 MiB on an RTX 6000 Ada, PyTorch 2.10.0+cu130)",
)

_CUDA_GPUS_PAGE = "https://developer.nvidia.com/cuda-gpus (compute capability table)"
_CUDA_LEGACY_GPUS_PAGE = "https://developer.nvidia.com/cuda-legacy-gpus (V100: 7.0)"

# Memory of MIG slices as nvidia-smi's "MIG devices" table prints it. Torch
# reports the same size for a slice: PyTorch out-of-memory messages in public
# logs print 4.75 GiB (4864 MiB) on a 1g.5gb slice and 19.50 GiB (19968 MiB)
# on an 80 GB 2g.20gb slice.
_A100_MIG_SOURCES = (
    "nvidia-smi 'MIG devices' tables on A100-SXM4-40GB (4864, 9984 and 20096 MiB "
    "for 1g/2g/3g) and A100-80GB (9728, 19968 and 40192 MiB), quoted from public "
    "logs whose repositories were not recorded",
    "https://github.com/XuehaiPan/nvitop/pull/8 "
    "(nvidia-smi on A100 80GB MIG 2g.20gb: 19968MiB)",
    "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html "
    "(A100 profile names and memory fractions)",
)


def _card(
    name: str,
    memory_bytes: int,
    compute_capability: tuple[int, int],
    memory_sources: tuple[str, ...],
    compute_capability_source: str = _CUDA_GPUS_PAGE,
    estimated: bool = False,
) -> CatalogCard:
    return CatalogCard(
        name=name,
        memory_bytes=memory_bytes,
        compute_capability=compute_capability,
        cuda_context_bytes=_CUDA_CONTEXT_ESTIMATE_BYTES[compute_capability],
        cublas_workspace_bytes=cublas_workspace_bytes(compute_capability),
        estimated=estimated,
        sources=(
            *memory_sources,
            compute_capability_source,
            _CUBLAS_WORKSPACE_SOURCE,
            *_CUDA_CONTEXT_SOURCES,
        ),
    )


_FULL_GPU_CARDS = (
    _card(
        "T4",
        _oom_capacity_lower_bound_bytes("14.56"),
        (7, 5),
        (
            "https://github.com/Zheng-Chong/CatVTON/issues/133 (Tesla T4 on GCP, "
            "2025-11: 'total capacity of 14.56 GiB')",
            "https://github.com/mryab/efficient-dl-systems/blob/"
            "e632aa89ca9e6638d52e1b686095e7442faffbb0/week01_intro/seminar.ipynb "
            "(Colab T4, driver 550.54.15: torch total_memory=15095MB, nvidia-smi 15360MiB)",
        ),
    ),
    _card(
        "L4",
        _mib(22563),
        (8, 9),
        (
            "Ultralytics 8.4.95 training log on a Colab L4, torch 2.11.0+cu128: "
            "'CUDA:0 (NVIDIA L4, 22563MiB)' and 'total capacity of 22.03 GiB', "
            "quoted from a public log whose repository was not recorded",
        ),
    ),
    _card(
        "A10G",
        _mib(22513),
        (8, 6),
        (
            "https://github.com/ultralytics/ultralytics/issues/7673 (AWS, torch "
            "2.1.0+cu121: 'CUDA:0 (NVIDIA A10G, 22513MiB)')",
            "TorchCodec docs, 'Accelerated video decoding on GPUs with CUDA and NVDEC' "
            "(torch 2.15.0.dev20260909+cu130: name='NVIDIA A10G', major=8, minor=6, "
            "total_memory=22587MB)",
        ),
        # The CUDA GPUs page lists the A10 at 8.6 but not the A10G, so the
        # A10G's 8.6 comes from the torch output above.
        compute_capability_source=_CUDA_GPUS_PAGE + ", NVIDIA A10: 8.6",
    ),
    _card(
        "RTX-4090",
        _oom_capacity_lower_bound_bytes("23.49"),
        (8, 9),
        (
            "https://github.com/Sautenich/UAV-VLA/issues/7 (Ubuntu 22.04, driver "
            "575.64.03: 'total capacity of 23.49 GiB')",
            "https://github.com/ali-vilab/VGen/issues/104 (another RTX 4090: "
            "'total capacity of 23.64 GiB')",
        ),
    ),
    _card(
        "V100-16GB",
        _oom_capacity_lower_bound_bytes("15.78"),
        (7, 0),
        (
            "https://github.com/kchengiva/Shift-GCN/issues/34 "
            "(16 GB V100: '15.78 GiB total capacity')",
        ),
        compute_capability_source=_CUDA_LEGACY_GPUS_PAGE,
    ),
    _card(
        "V100-32GB",
        _oom_capacity_lower_bound_bytes("31.74"),
        (7, 0),
        (
            "https://github.com/liucongg/ChatGLM-Finetuning/issues/73 "
            "(V100 32GB: '31.74 GiB total capacity')",
        ),
        compute_capability_source=_CUDA_LEGACY_GPUS_PAGE,
    ),
    _card(
        "A100-40GB",
        _mib(40385),
        (8, 0),
        (
            "https://github.com/ultralytics/ultralytics/issues/18492 (A100-PCIE-40GB, "
            "torch 2.4.1+cu118: 40385MiB; another machine with torch 1.13.0: 40536MiB)",
        ),
    ),
    _card(
        "A100-80GB",
        _mib(81051),
        (8, 0),
        (
            "https://github.com/ultralytics/ultralytics/issues/22877 (A100-SXM4-80GB, "
            "torch 2.9.1+cu128, CUDA 12.8: 81051MiB)",
        ),
    ),
    _card(
        "H100-80GB",
        _oom_capacity_lower_bound_bytes("79.11"),
        (9, 0),
        (
            "https://github.com/vllm-project/vllm/issues/27508 "
            "(H100: 'total capacity of 79.11 GiB')",
        ),
    ),
    # The ml-engineering page does not say which tool printed 143155 MiB. It is
    # torch's figure, not nvidia-smi's: torch printed 143156MB on another H200,
    # while nvidia-smi prints 143771 MiB on that card.
    _card(
        "H200",
        _mib(143155),
        (9, 0),
        (
            "stas00/ml-engineering network/benchmarks/results/all-reduce-8xH200.md at "
            "commit c53741b8 (torch 2.9.1+cu130: 'NVIDIA H200 SXM (143155MiB HBM3e each)')",
            "_CudaDeviceProperties(name='NVIDIA H200', major=9, minor=0, "
            "total_memory=143156MB) and nvidia-smi tables with '/ 143771MiB' on H200, "
            "quoted from public files whose repositories were not recorded",
        ),
    ),
)

_MIG_SLICE_CARDS = (
    _card("A100-40GB-MIG-1g.5gb", _mib(4864), (8, 0), _A100_MIG_SOURCES),
    _card("A100-40GB-MIG-2g.10gb", _mib(9984), (8, 0), _A100_MIG_SOURCES),
    _card("A100-40GB-MIG-3g.20gb", _mib(20096), (8, 0), _A100_MIG_SOURCES),
    _card("A100-80GB-MIG-1g.10gb", _mib(9728), (8, 0), _A100_MIG_SOURCES),
    _card("A100-80GB-MIG-2g.20gb", _mib(19968), (8, 0), _A100_MIG_SOURCES),
    _card("A100-80GB-MIG-3g.40gb", _mib(40192), (8, 0), _A100_MIG_SOURCES),
)

CATALOG_CARDS: dict[str, CatalogCard] = {
    card.name: card for card in (*_FULL_GPU_CARDS, *_MIG_SLICE_CARDS)
}
