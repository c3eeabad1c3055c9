"""Checks on the card catalog: names, sources, plausible sizes and overheads."""

import pytest

from planner.catalog import (
    BYTES_PER_GIB,
    BYTES_PER_MIB,
    CATALOG_CARDS,
    CUBLAS_WORKSPACE_DEFAULT_BYTES,
    CUBLAS_WORKSPACE_SM90_BYTES,
    CUBLASLT_WORKSPACE_DEFAULT_BYTES,
    _oom_capacity_lower_bound_bytes,
)

FULL_GPU_NAMES = (
    "T4", "L4", "A10G", "RTX-4090", "V100-16GB", "V100-32GB",
    "A100-40GB", "A100-80GB", "H100-80GB", "H200",
)

# MIG slice name -> the full card it is cut from.
MIG_PARENTS = {
    "A100-40GB-MIG-1g.5gb": "A100-40GB",
    "A100-40GB-MIG-2g.10gb": "A100-40GB",
    "A100-40GB-MIG-3g.20gb": "A100-40GB",
    "A100-80GB-MIG-1g.10gb": "A100-80GB",
    "A100-80GB-MIG-2g.20gb": "A100-80GB",
    "A100-80GB-MIG-3g.40gb": "A100-80GB",
}

# Marketing memory size, read as GiB. Every reported total is below it because
# the driver keeps some memory for itself, so each must lie between 0.9x and
# 1.0x of it.
MARKETING_SIZE_GIB = {
    "T4": 16,  # 16 GB GDDR6
    "L4": 24,  # 24 GB GDDR6
    "A10G": 24,  # 24 GB GDDR6
    "RTX-4090": 24,  # 24 GB GDDR6X
    "V100-16GB": 16,  # 16 GB HBM2
    "V100-32GB": 32,  # 32 GB HBM2
    "A100-40GB": 40,  # 40 GB HBM2
    "A100-80GB": 80,  # 80 GB HBM2e
    "H100-80GB": 80,  # 80 GB HBM3
    # NVIDIA sells the H200 as "141GB". The reported total is 150.1e9 bytes,
    # more than 141e9, so the figure only makes sense as 141 GiB.
    "H200": 141,
    "A100-40GB-MIG-1g.5gb": 5,  # the profile name gives the slice size
    "A100-40GB-MIG-2g.10gb": 10,
    "A100-40GB-MIG-3g.20gb": 20,
    "A100-80GB-MIG-1g.10gb": 10,
    "A100-80GB-MIG-2g.20gb": 20,
    "A100-80GB-MIG-3g.40gb": 40,
}

# Compute capabilities of each architecture, from NVIDIA's CUDA GPUs page.
ARCHITECTURE_CAPABILITIES = {
    "Volta": {(7, 0)},
    "Turing": {(7, 5)},
    "Ampere": {(8, 0), (8, 6)},
    "Ada": {(8, 9)},
    "Hopper": {(9, 0)},
}

# Card -> (architecture, compute capability).
EXPECTED_ARCHITECTURE = {
    "T4": ("Turing", (7, 5)),
    "L4": ("Ada", (8, 9)),
    "A10G": ("Ampere", (8, 6)),
    "RTX-4090": ("Ada", (8, 9)),
    "V100-16GB": ("Volta", (7, 0)),
    "V100-32GB": ("Volta", (7, 0)),
    "A100-40GB": ("Ampere", (8, 0)),
    "A100-80GB": ("Ampere", (8, 0)),
    "H100-80GB": ("Hopper", (9, 0)),
    "H200": ("Hopper", (9, 0)),
    **{name: ("Ampere", (8, 0)) for name in MIG_PARENTS},
}


def test_catalog_names_match_required_cards():
    assert set(CATALOG_CARDS) == set(FULL_GPU_NAMES) | set(MIG_PARENTS)


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_card_name_matches_key(name):
    assert CATALOG_CARDS[name].name == name


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_card_cites_sources(name):
    sources = CATALOG_CARDS[name].sources
    assert isinstance(sources, tuple)
    assert len(sources) >= 4, "expected sources for memory, capability, cuBLAS and context"
    for source in sources:
        assert isinstance(source, str)
        assert source.strip(), f"{name} has an empty source"


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_memory_within_marketing_size(name):
    card = CATALOG_CARDS[name]
    marketing_bytes = MARKETING_SIZE_GIB[name] * BYTES_PER_GIB
    assert isinstance(card.memory_bytes, int)
    assert card.memory_bytes >= 0.9 * marketing_bytes, f"{name}: {card.memory_bytes} too small"
    assert card.memory_bytes <= marketing_bytes, f"{name}: {card.memory_bytes} too large"


@pytest.mark.parametrize("slice_name, parent_name", sorted(MIG_PARENTS.items()))
def test_mig_slice_smaller_than_parent(slice_name, parent_name):
    slice_card = CATALOG_CARDS[slice_name]
    parent_card = CATALOG_CARDS[parent_name]
    assert slice_card.memory_bytes < parent_card.memory_bytes
    assert slice_card.compute_capability == parent_card.compute_capability


@pytest.mark.parametrize("parent_name", ["A100-40GB", "A100-80GB"])
def test_mig_slices_grow_with_profile(parent_name):
    slices = sorted(
        (name for name, parent in MIG_PARENTS.items() if parent == parent_name),
        key=lambda name: name.split("-MIG-")[1],  # "1g..." < "2g..." < "3g..."
    )
    sizes = [CATALOG_CARDS[name].memory_bytes for name in slices]
    assert len(sizes) == 3
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == 3


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_compute_capability_matches_architecture(name):
    architecture, expected_capability = EXPECTED_ARCHITECTURE[name]
    capability = CATALOG_CARDS[name].compute_capability
    assert capability in ARCHITECTURE_CAPABILITIES[architecture]
    assert capability == expected_capability


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_overhead_is_context_plus_workspace(name):
    card = CATALOG_CARDS[name]
    assert card.overhead_bytes == card.cuda_context_bytes + card.cublas_workspace_bytes


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_context_estimate_in_reported_range(name):
    # Reported contexts with lazy module loading span about 250-450 MiB.
    # Hopper's estimate is above that, so the bound allows up to 600 MiB.
    context_bytes = CATALOG_CARDS[name].cuda_context_bytes
    assert 250 * BYTES_PER_MIB <= context_bytes <= 600 * BYTES_PER_MIB


def test_cublas_workspace_defaults_match_pytorch_source():
    # ":4096:2:16:8" in KiB, 32 MiB on sm90, and 1024 KiB for cuBLASLt.
    assert CUBLAS_WORKSPACE_DEFAULT_BYTES == 8_519_680
    assert CUBLAS_WORKSPACE_SM90_BYTES == 33_554_432
    assert CUBLASLT_WORKSPACE_DEFAULT_BYTES == 1_048_576


@pytest.mark.parametrize("name", sorted(CATALOG_CARDS))
def test_cublas_workspace_per_capability(name):
    card = CATALOG_CARDS[name]
    if card.compute_capability == (9, 0):
        expected = CUBLAS_WORKSPACE_SM90_BYTES + CUBLASLT_WORKSPACE_DEFAULT_BYTES
    else:
        expected = CUBLAS_WORKSPACE_DEFAULT_BYTES + CUBLASLT_WORKSPACE_DEFAULT_BYTES
    assert card.cublas_workspace_bytes == expected


@pytest.mark.parametrize("printed_gib", ["4.75", "14.56", "23.49", "79.11", "139.81"])
def test_oom_lower_bound_prints_back(printed_gib):
    total_bytes = _oom_capacity_lower_bound_bytes(printed_gib)
    assert total_bytes % BYTES_PER_MIB == 0
    # PyTorch formats the total with two fixed decimals. The bound must print
    # as the same figure, and one MiB less must not.
    assert f"{total_bytes / BYTES_PER_GIB:.2f}" == printed_gib
    assert f"{(total_bytes - BYTES_PER_MIB) / BYTES_PER_GIB:.2f}" != printed_gib


def test_oom_lower_bound_known_value():
    # 14.555 GiB = 14904.32 MiB, rounded up to 14905 MiB.
    assert _oom_capacity_lower_bound_bytes("14.56") == 14905 * BYTES_PER_MIB


def test_no_card_memory_is_estimated():
    # Every memory figure in this catalog was reported from a real card.
    # NOTE: update this test when an entry is added with estimated=True.
    estimated = sorted(name for name, card in CATALOG_CARDS.items() if card.estimated)
    assert estimated == []
