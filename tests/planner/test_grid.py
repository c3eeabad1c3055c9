"""Tests for the grid file: validation messages, expansion into trial specs, and parse_memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.architectures import CLASSIFICATION, SEGMENTATION
from planner.catalog import CATALOG_CARDS
from planner.cards import CATALOG, DEFAULT_OVERHEAD_BYTES, MiB, Card, parse_memory
from planner.cli import load_default_grid
from planner.grid import Grid, GridError, TrialSettings, TrialSpec, load_grid, parse_grid

REPOSITORY = Path(__file__).resolve().parents[2]

# Valid parts that each bad-input case pairs with its one invalid part.
CARDS = "cards: [T4]\n"
MODEL = "{task: classification, arch: resnet18, image_size: 32, batch_size: 8}"
MODELS = f"models: [{MODEL}]\n"

# The advice that follows every memory size that does not parse.
MEMORY_ADVICE = (
    "which is not a memory size. Use a positive number with a unit such as 512MiB, 16GiB "
    "or 40GB (GB = 10^9 bytes, GiB = 2^30 bytes), or a plain number of bytes"
)
MODEL_KEYS_ADVICE = "a classification entry needs task, arch, image_size and batch_size"
# The messages list the whole catalog and every supported architecture. This
# file checks the wording around those lists, not their contents.
CATALOG_NAMES = ", ".join(CATALOG)
CLASSIFICATION_NAMES = ", ".join(CLASSIFICATION)
SEGMENTATION_NAMES = ", ".join(SEGMENTATION)


def image_size_grid(value: str) -> str:
    """Return a grid whose second model entry lists ``value`` as its first image size."""
    second = f"{{task: classification, arch: resnet18, image_size: [{value}, 64], batch_size: 8}}"
    return CARDS + f"models: [{MODEL}, {second}]\n"


def card_grid(card: str) -> str:
    """Return a grid whose only card is ``card``."""
    return f"cards: [{card}]\n" + MODELS


def trial_grid(trial: str) -> str:
    """Return a grid with ``trial`` as its trial settings."""
    return CARDS + f"trial: {trial}\n" + MODELS


def model_grid(entry: str) -> str:
    """Return a grid whose only model entry is ``entry``."""
    return CARDS + f"models: [{entry}]\n"


BAD_GRIDS = [
    # Unknown keys, at the top level and inside each kind of mapping.
    pytest.param(
        CARDS + MODELS + "modles: []\n",
        "modles is not a known key (did you mean 'models'?). Known keys: cards, trial, models, headroom, sizing",
        id="top_key_hint",
    ),
    pytest.param(
        CARDS + MODELS + "colour: red\n",
        "colour is not a known key. Known keys: cards, trial, models, headroom, sizing",
        id="top_key_no_hint",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet18, image_size: 32, batch_size: 8, batchsize: 8}"),
        "models[0].batchsize is not a known key (did you mean 'batch_size'?). Keys of a classification entry: "
        "task, arch, image_size, classes, stages, batch_size, precision, fit, valid_batch_size, grad_accumulation, dataset_size",
        id="model_key",
    ),
    pytest.param(
        trial_grid("{train_batch: 2}"),
        "trial.train_batch is not a known key (did you mean 'train_batches'?). "
        "Known keys: train_batches, valid_batches, timeout_seconds, repeats, scan_batches",
        id="trial_key",
    ),
    pytest.param(
        card_grid("{name: small, memory: 4GiB, memroy: 4GiB}"),
        "cards[0].memroy is not a known key (did you mean 'memory'?). Known keys: name, memory, overhead, backend",
        id="card_key",
    ),
    # Tasks and architectures.
    pytest.param(
        model_grid("{task: detection, arch: resnet18, image_size: 32, batch_size: 8}"),
        "models[0].task is 'detection', which is not a known task. Use one of classification, segmentation, text_classifier, language_model, tabular",
        id="task_unknown",
    ),
    pytest.param(
        model_grid("{task: classify, arch: resnet18, image_size: 32, batch_size: 8}"),
        "models[0].task is 'classify', which is not a known task (did you mean 'classification'?). "
        "Use one of classification, segmentation, text_classifier, language_model, tabular",
        id="task_hint",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet19, image_size: 32, batch_size: 8}"),
        "models[0].arch is 'resnet19', which is not a torchvision architecture that classification "
        f"supports (did you mean 'resnet18'?). Supported: {CLASSIFICATION_NAMES}",
        id="arch_classification",
    ),
    pytest.param(
        # torchvision has vit_b_16, but no task supports it because fastai's
        # learners fail on ViTs. The second list item gets index [1].
        model_grid("{task: segmentation, arch: [resnet18, vit_b_16], image_size: 32, batch_size: 8}"),
        "models[0].arch[1] is 'vit_b_16', which is not a torchvision architecture that segmentation "
        f"supports. Supported: {SEGMENTATION_NAMES}",
        id="arch_segmentation",
    ),
    # Counts: image sizes, batch sizes and classes.
    pytest.param(
        image_size_grid("0"),
        "models[1].image_size[0] is 0, but it must be a positive integer (pixels per side)",
        id="image_size_zero",
    ),
    pytest.param(
        image_size_grid("-3"),
        "models[1].image_size[0] is -3, but it must be a positive integer (pixels per side)",
        id="image_size_negative",
    ),
    pytest.param(
        image_size_grid("big"),
        "models[1].image_size[0] is 'big', but it must be a positive integer (pixels per side)",
        id="image_size_text",
    ),
    pytest.param(
        image_size_grid("1.5"),
        "models[1].image_size[0] is 1.5, but it must be a positive integer (pixels per side)",
        id="image_size_float",
    ),
    pytest.param(
        # YAML true loads as Python True, and bool is a subclass of int.
        image_size_grid("true"),
        "models[1].image_size[0] is True, but it must be a positive integer (pixels per side)",
        id="image_size_bool",
    ),
    pytest.param(
        # A scalar has no list index in its place.
        model_grid("{task: classification, arch: resnet18, image_size: 32, batch_size: 0}"),
        "models[0].batch_size is 0, but it must be a positive integer (samples per batch)",
        id="batch_size_scalar",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet18, image_size: 32, batch_size: []}"),
        "models[0].batch_size is an empty list: give at least one value",
        id="batch_size_empty",
    ),
    pytest.param(
        model_grid("{task: classification, arch: [], image_size: 32, batch_size: 8}"),
        "models[0].arch is an empty list: give at least one value",
        id="arch_empty",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet18, image_size: 32, batch_size: 8, classes: 1}"),
        "models[0].classes is 1, but a task needs at least 2 classes",
        id="classes_one",
    ),
    pytest.param(
        model_grid("{task: segmentation, arch: resnet18, image_size: 32, batch_size: 8, classes: 0}"),
        "models[0].classes is 0, but it must be a positive integer (classes)",
        id="classes_zero",
    ),
    # Precision.
    pytest.param(
        model_grid("{task: classification, arch: resnet18, image_size: 32, batch_size: 8, precision: fp8}"),
        "models[0].precision is 'fp8', which is not a known precision. Use one of fp32, fp16, bf16",
        id="precision_scalar",
    ),
    pytest.param(
        model_grid(
            "{task: classification, arch: resnet18, image_size: 32, batch_size: 8, precision: [fp16, int8]}"
        ),
        "models[0].precision[1] is 'int8', which is not a known precision. Use one of fp32, fp16, bf16",
        id="precision_list",
    ),
    # Model entries.
    pytest.param(
        model_grid("{arch: resnet18, image_size: 32, batch_size: 8}"),
        "models[0].task is missing: every model entry needs a task (classification, segmentation, "
        "text_classifier, language_model, tabular) or a learner factory (learner: module:function)",
        id="model_no_task",
    ),
    pytest.param(
        model_grid("{task: classification, image_size: 32, batch_size: 8}"),
        f"models[0].arch is missing: {MODEL_KEYS_ADVICE}",
        id="model_no_arch",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet18, batch_size: 8}"),
        f"models[0].image_size is missing: {MODEL_KEYS_ADVICE}",
        id="model_no_image_size",
    ),
    pytest.param(
        model_grid("{task: classification, arch: resnet18, image_size: 32}"),
        f"models[0].batch_size is missing: {MODEL_KEYS_ADVICE}",
        id="model_no_batch_size",
    ),
    pytest.param(
        model_grid("resnet18"),
        "models[0] is 'resnet18', but a model entry must be a mapping with task, arch, image_size and batch_size",
        id="model_not_mapping",
    ),
    pytest.param(
        CARDS + "models: []\n",
        "models is [], but it must be a non-empty list of model entries, each with task, arch, "
        "image_size and batch_size",
        id="models_empty",
    ),
    pytest.param(
        CARDS,
        "models is missing: a grid needs a list of model entries, each with task, arch, image_size and batch_size",
        id="models_missing",
    ),
    # Cards.
    pytest.param(
        MODELS,
        "cards is missing: a grid needs a list of cards, for example "
        "cards: [local, A100-40GB, {name: small, memory: 4GiB}]",
        id="cards_missing",
    ),
    pytest.param(
        "cards: []\n" + MODELS,
        "cards is [], but it must be a non-empty list of catalog names, 'local' or inline cards "
        "such as {name: small, memory: 4GiB}",
        id="cards_empty",
    ),
    pytest.param(
        card_grid("{name: small}"),
        "cards[0].memory is missing: an inline card needs its memory, for example memory: 16GiB",
        id="card_no_memory",
    ),
    pytest.param(
        card_grid("{memory: 4GiB}"),
        "cards[0].name is None, but an inline card needs a non-empty name",
        id="card_no_name",
    ),
    pytest.param(
        card_grid("{name: local, memory: 4GiB}"),
        "cards[0].name is 'local', which is reserved for the GPUs Ray finds",
        id="card_name_local",
    ),
    pytest.param(
        card_grid("{name: small, memory: 4 parsecs}"),
        f"cards[0].memory is '4 parsecs', {MEMORY_ADVICE}",
        id="memory_unknown_unit",
    ),
    pytest.param(
        card_grid("{name: small, memory: lots}"),
        f"cards[0].memory is 'lots', {MEMORY_ADVICE}",
        id="memory_text",
    ),
    pytest.param(
        card_grid("{name: small, memory: -1}"),
        f"cards[0].memory is -1, {MEMORY_ADVICE}",
        id="memory_negative",
    ),
    pytest.param(
        card_grid("{name: small, memory: 4GiB, overhead: lots}"),
        f"cards[0].overhead is 'lots', {MEMORY_ADVICE}",
        id="overhead_text",
    ),
    pytest.param(
        card_grid("{name: small, memory: 4GiB, overhead: 4GiB}"),
        "cards[0].overhead is '4GiB', which leaves no memory of '4GiB' for trials: it must be smaller than memory",
        id="overhead_equal",
    ),
    pytest.param(
        card_grid("{name: small, memory: 4GiB, overhead: 5GB}"),
        "cards[0].overhead is '5GB', which leaves no memory of '4GiB' for trials: it must be smaller than memory",
        id="overhead_larger",
    ),
    pytest.param(
        # A10 is close to the catalog's A10G.
        card_grid("A10"),
        f"cards[0] is 'A10', which is not a catalog card (did you mean 'A10G'?). Use one of {CATALOG_NAMES}, "
        "'local', or an inline card such as {name: A10, memory: 24GiB}",
        id="card_unknown_hint",
    ),
    pytest.param(
        card_grid("Quadro"),
        f"cards[0] is 'Quadro', which is not a catalog card. Use one of {CATALOG_NAMES}, "
        "'local', or an inline card such as {name: Quadro, memory: 24GiB}",
        id="card_unknown",
    ),
    pytest.param(
        card_grid("16"),
        "cards[0] is 16, but a card must be a catalog name or a mapping with name and memory",
        id="card_number",
    ),
    pytest.param(
        "cards: [T4, T4]\n" + MODELS,
        "cards[1] repeats the card name 'T4': card names must be unique",
        id="card_repeated",
    ),
    pytest.param(
        "cards: [T4, {name: T4, memory: 16GiB}]\n" + MODELS,
        "cards[1] repeats the card name 'T4': card names must be unique",
        id="card_inline_repeats_catalog",
    ),
    # Trial settings.
    pytest.param(
        trial_grid("{train_batches: 1}"),
        "trial.train_batches is 1, but it must be an integer of at least 2, "
        "so that the optimizer steps twice and its state exists",
        id="train_batches_one",
    ),
    pytest.param(
        trial_grid("{train_batches: two}"),
        "trial.train_batches is 'two', but it must be an integer of at least 2, "
        "so that the optimizer steps twice and its state exists",
        id="train_batches_text",
    ),
    pytest.param(
        trial_grid("{valid_batches: -1}"),
        "trial.valid_batches is -1, but it must be a non-negative integer (0 skips validation)",
        id="valid_batches_negative",
    ),
    pytest.param(
        trial_grid("2"),
        "trial is 2, but it must be a mapping such as {train_batches: 2, valid_batches: 1}",
        id="trial_not_mapping",
    ),
    # The document itself.
    pytest.param(
        "- T4\n- resnet18\n",
        "the file must be a mapping with keys cards, trial, models, headroom, sizing, got list",
        id="file_list",
    ),
    pytest.param(
        "just some text\n",
        "the file must be a mapping with keys cards, trial, models, headroom, sizing, got str",
        id="file_text",
    ),
    pytest.param(
        # The flow list opened on line 1 is still open at the colon after
        # "models" on line 2, column 7.
        "cards: [T4\n" + MODELS,
        "invalid YAML: expected ',' or ']', but got ':' at line 2, column 7",
        id="yaml_invalid",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_GRIDS)
def test_parse_grid_rejects(text: str, expected: str) -> None:
    with pytest.raises(GridError) as info:
        parse_grid(text)

    assert info.value.problems == [expected]


def test_parse_grid_reports_all_problems() -> None:
    text = (
        "colour: red\n"
        "cards: [T4, {name: small}]\n"
        "trial: {train_batches: 1}\n"
        "models:\n"
        "  - {task: classification, arch: resnet18, image_size: 0, batch_size: 8}\n"
        "  - {task: detection, arch: resnet18, image_size: 32, batch_size: 8}\n"
    )

    with pytest.raises(GridError) as info:
        parse_grid(text)

    # Top-level keys first, then cards, trial and models in file order.
    assert len(info.value.problems) == 5
    assert info.value.problems == [
        "colour is not a known key. Known keys: cards, trial, models, headroom, sizing",
        "cards[1].memory is missing: an inline card needs its memory, for example memory: 16GiB",
        "trial.train_batches is 1, but it must be an integer of at least 2, "
        "so that the optimizer steps twice and its state exists",
        "models[0].image_size is 0, but it must be a positive integer (pixels per side)",
        "models[1].task is 'detection', which is not a known task. Use one of classification, segmentation, text_classifier, language_model, tabular",
    ]


def test_grid_error_str_one_problem() -> None:
    with pytest.raises(GridError) as info:
        parse_grid(CARDS + MODELS + "colour: red\n", source="plans/grid.yaml")

    assert str(info.value).startswith("plans/grid.yaml: ")
    assert str(info.value) == (
        "plans/grid.yaml: 1 problem:\n  colour is not a known key. Known keys: cards, trial, models, headroom, sizing"
    )
    assert info.value.source == "plans/grid.yaml"


def test_grid_error_str_two_problems() -> None:
    with pytest.raises(GridError) as info:
        parse_grid(CARDS + MODELS + "colour: red\nsize: 3\n", source="plans/grid.yaml")

    assert str(info.value) == (
        "plans/grid.yaml: 2 problems:\n"
        "  colour is not a known key. Known keys: cards, trial, models, headroom, sizing\n"
        # difflib finds "size" close to "sizing".
        "  size is not a known key (did you mean 'sizing'?). Known keys: cards, trial, models, headroom, sizing"
    )


def test_load_grid_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(GridError) as info:
        load_grid(path)

    assert info.value.problems == [f"grid file {str(path)!r} not found"]
    assert info.value.source == str(path)


def test_load_grid_folder(tmp_path: Path) -> None:
    with pytest.raises(GridError) as info:
        load_grid(tmp_path)

    # Reading a folder fails with EISDIR, whose Linux text is "Is a directory".
    assert info.value.problems == ["cannot read grid file: Is a directory"]


def test_load_grid_source_is_path(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(CARDS + MODELS)

    grid = load_grid(path)

    assert grid.source == str(path)


# Valid grids.


def test_expansion_count() -> None:
    text = CARDS + (
        "models:\n"
        "  - task: classification\n"
        "    arch: [resnet18, resnet34]\n"
        "    image_size: [32, 64]\n"
        "    batch_size: [4, 8, 16]\n"
        "    precision: [fp32, bf16]\n"
    )

    grid = parse_grid(text)

    # 2 architectures x 2 image sizes x 3 batch sizes x 2 precisions.
    assert len(grid.points) == 24
    assert len(set(grid.points)) == 24


def test_expansion_specs() -> None:
    text = CARDS + (
        "trial: {train_batches: 3, valid_batches: 0}\n"
        "models:\n"
        "  - {task: classification, arch: [resnet18, resnet34], image_size: [32, 64], batch_size: 8}\n"
    )

    grid = parse_grid(text)

    # Classes default to 10 for classification, and each spec carries the trial settings.
    assert set(grid.points) == {
        TrialSpec("classification", "resnet18", 32, 8, "fp32", 10, 3, 0, 0),
        TrialSpec("classification", "resnet18", 64, 8, "fp32", 10, 3, 0, 0),
        TrialSpec("classification", "resnet34", 32, 8, "fp32", 10, 3, 0, 0),
        TrialSpec("classification", "resnet34", 64, 8, "fp32", 10, 3, 0, 0),
    }
    assert len(grid.points) == 4


def test_scalars_as_lists() -> None:
    scalars = parse_grid(
        model_grid(
            "{task: segmentation, arch: resnet34, image_size: 96, batch_size: 4, precision: bf16, classes: 3}"
        )
    )
    lists = parse_grid(
        model_grid(
            "{task: segmentation, arch: [resnet34], image_size: [96], batch_size: [4], "
            "precision: [bf16], classes: [3]}"
        )
    )

    assert scalars.points == (TrialSpec("segmentation", "resnet34", 96, 4, "bf16", 3),)
    assert lists.points == scalars.points


def test_defaults_classification() -> None:
    grid = parse_grid(CARDS + MODELS)

    assert grid.points[0].precision == "fp32"
    assert grid.points[0].classes == 10


def test_defaults_segmentation() -> None:
    grid = parse_grid(model_grid("{task: segmentation, arch: resnet18, image_size: 32, batch_size: 8}"))

    assert grid.points[0].precision == "fp32"
    assert grid.points[0].classes == 4


def test_defaults_trial() -> None:
    grid = parse_grid(CARDS + MODELS)

    assert grid.trial == TrialSettings(train_batches=2, valid_batches=1)
    assert grid.points[0].train_batches == 2
    assert grid.points[0].valid_batches == 1


def test_trial_partial() -> None:
    grid = parse_grid(trial_grid("{valid_batches: 0}"))

    assert grid.trial == TrialSettings(train_batches=2, valid_batches=0)


def test_local_card() -> None:
    grid = parse_grid("cards: [local, T4]\n" + MODELS)

    assert grid.local is True
    assert [card.name for card in grid.cards] == ["T4"]


def test_local_only() -> None:
    grid = parse_grid("cards: [local]\n" + MODELS)

    assert grid.local is True
    assert grid.cards == ()


def test_local_absent() -> None:
    grid = parse_grid(CARDS + MODELS)

    assert grid.local is False


def test_catalog_card() -> None:
    grid = parse_grid(CARDS + MODELS)

    # A catalog card carries the catalog's memory, CUDA context and cuBLAS workspace.
    entry = CATALOG_CARDS["T4"]
    assert grid.cards == (
        Card("T4", entry.memory_bytes, entry.cuda_context_bytes, "catalog", entry.cublas_workspace_bytes, (7, 5)),
    )


def test_inline_card_units() -> None:
    text = (
        "cards:\n"
        "  - {name: gib, memory: 4GiB}\n"
        "  - {name: gb, memory: 40GB}\n"
        "  - {name: mib, memory: 512MiB, overhead: 64MiB}\n"
        "  - {name: bytes, memory: 1000000}\n"
    ) + MODELS

    grid = parse_grid(text)

    # GiB and MiB are powers of 2, GB is a power of 10, and inline cards have no overhead unless set.
    assert grid.cards == (
        Card("gib", 4 * 2**30, 0, "inline"),
        Card("gb", 40 * 10**9, 0, "inline"),
        Card("mib", 512 * 2**20, 64 * 2**20, "inline"),
        Card("bytes", 1_000_000, 0, "inline"),
    )


def test_card_order() -> None:
    grid = parse_grid("cards: [H200, {name: small, memory: 4GiB}, T4]\n" + MODELS)

    assert [card.name for card in grid.cards] == ["H200", "small", "T4"]


def test_entry_index() -> None:
    text = CARDS + (
        "models:\n"
        "  - {task: classification, arch: resnet18, image_size: 32, batch_size: [8, 16]}\n"
        "  - {task: segmentation, arch: resnet18, image_size: 32, batch_size: [2, 4, 8]}\n"
    )

    grid = parse_grid(text)

    assert [spec.entry for spec in grid.points] == [0, 0, 1, 1, 1]
    assert [spec.task for spec in grid.points] == ["classification"] * 2 + ["segmentation"] * 3


def test_as_row_fields() -> None:
    spec = TrialSpec("classification", "resnet18", 32, 8, "fp16", 10, 2, 1, 3)

    assert spec.as_row() == {
        "task": "classification",
        "arch": "resnet18",
        "image_size": 32,
        "batch_size": 8,
        "precision": "fp16",
        "classes": 10,
        "train_batches": 2,
        "valid_batches": 1,
        "entry": 3,
        "fit": "fit_one_cycle",
        "later_stages": None,
        "requested_valid_batch_size": None,
        "grad_accumulation": 1,
        "effective_batch_size": 8,
        "seq_len": None,
        "vocab_size": None,
        "n_cont": None,
        "n_cat": None,
        "cardinality": None,
        "layers": None,
        "params": None,
        "scan_batches": 32,
    }


def test_example_grid_parses() -> None:
    grid = load_grid(REPOSITORY / "examples" / "grid.yaml")

    assert isinstance(grid, Grid)
    assert len(grid.points) > 0
    assert len(grid.cards) > 0


def test_default_grid_parses() -> None:
    grid = load_default_grid()

    assert grid.source == "default grid"
    assert len(grid.points) > 0


# parse_memory.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1024", 1024, id="plain_text"),
        pytest.param(1024, 1024, id="plain_int"),
        pytest.param("100B", 100, id="bytes"),
        pytest.param("2KB", 2_000, id="kb"),
        pytest.param("2KiB", 2_048, id="kib"),
        pytest.param("40GB", 40 * 10**9, id="gb"),
        pytest.param("4GiB", 4 * 2**30, id="gib"),
        pytest.param("1TB", 10**12, id="tb"),
        pytest.param("1TiB", 2**40, id="tib"),
        pytest.param("512 MiB", 512 * 2**20, id="space_before_unit"),
        pytest.param("  8GiB  ", 8 * 2**30, id="outer_spaces"),
        pytest.param("16gib", 16 * 2**30, id="lower_case"),
        pytest.param("16GIB", 16 * 2**30, id="upper_case"),
        pytest.param("1.5GiB", 3 * 2**29, id="fraction"),
        pytest.param("0.5MiB", 2**19, id="fraction_below_one"),
        pytest.param(
            "2.01GB",
            2_010_000_000,
            id="decimal_fraction",
            # 2.01 * 10**9 is 2009999999.9999998 in binary floating point: it must round, not truncate.
        ),
    ],
)
def test_parse_memory_valid(value: int | str, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("4 parsecs", "'4 parsecs' has an unknown unit 'parsecs'", id="unknown_unit"),
        pytest.param("lots", "'lots' is not a memory size", id="word"),
        pytest.param("", "'' is not a memory size", id="empty"),
        pytest.param("GiB", "'GiB' is not a memory size", id="unit_only"),
        pytest.param("0", "'0' is not a positive memory size", id="zero"),
        pytest.param("0GiB", "'0GiB' is not a positive memory size", id="zero_gib"),
        # 0.1 bytes truncates to 0.
        pytest.param("0.1B", "'0.1B' is not a positive memory size", id="below_one_byte"),
        pytest.param(-1, "-1 is not a positive memory size", id="negative_int"),
        pytest.param("-1GiB", "'-1GiB' is not a memory size", id="negative_text"),
        pytest.param("1e9", "'1e9' is not a memory size", id="exponent"),
        pytest.param("1,024", "'1,024' is not a memory size", id="thousands_separator"),
        pytest.param(1.5, "1.5 is not a memory size", id="float"),
        pytest.param(True, "True is not a memory size", id="bool"),
        pytest.param(None, "None is not a memory size", id="none"),
    ],
)
def test_parse_memory_invalid(value: object, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(value)  # type: ignore[arg-type]

    assert str(info.value) == expected
