"""Grid entries for text, tabular, timm and learner factories: expansion and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.grid import GridError, TrialSpec, load_grid, parse_grid
from planner.tasks import DEFAULT_LAYERS, DEFAULT_VOCAB_SIZE

REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = REPOSITORY / "examples"
CARDS = "cards: [T4]\n"


def model_grid(entry: str) -> str:
    return CARDS + f"models: [{entry}]\n"


def problems_of(text: str, folder: Path | None = EXAMPLES) -> list[str]:
    with pytest.raises(GridError) as info:
        parse_grid(text, folder=folder)
    return info.value.problems


BAD_ENTRIES = [
    pytest.param(
        "{task: text_classifier, arch: AWD_LSTM, seq_len: 100, batch_size: 8, image_size: 32}",
        "models[0].image_size is not a key of a text_classifier entry. Its keys: task, arch, seq_len, vocab_size, "
        "classes, batch_size, precision, fit, valid_batch_size, grad_accumulation, dataset_size",
        id="image_size_on_text",
    ),
    pytest.param(
        "{task: text_classifier, arch: AWD_LSTM, batch_size: 8}",
        "models[0].seq_len is missing: a text_classifier entry needs task, arch, seq_len and batch_size",
        id="text_no_seq_len",
    ),
    pytest.param(
        "{task: language_model, arch: AWD_QRNN, seq_len: 72, batch_size: 8}",
        "models[0].arch is 'AWD_QRNN', which is not a fastai text architecture. Use one of AWD_LSTM",
        id="text_arch",
    ),
    pytest.param(
        "{task: language_model, arch: AWD_LSTM, seq_len: [72, 0], batch_size: 8}",
        "models[0].seq_len[1] is 0, but it must be a positive integer (tokens per sequence)",
        id="seq_len_zero",
    ),
    pytest.param(
        "{task: language_model, arch: AWD_LSTM, seq_len: 72, batch_size: 8, vocab_size: 8}",
        "models[0].vocab_size is 8, but it must be an integer of at least 16 "
        "(tokens in the vocabulary, fastai's special tokens included)",
        id="vocab_size_small",
    ),
    pytest.param(
        "{task: tabular, n_cont: 0, n_cat: [0, 2], batch_size: 8}",
        "models[0] has a point with n_cont 0 and n_cat 0: a table needs at least one column",
        id="tabular_no_columns",
    ),
    pytest.param(
        "{task: tabular, n_cont: -1, n_cat: 2, batch_size: 8}",
        "models[0].n_cont is -1, but it must be a non-negative integer (continuous columns)",
        id="n_cont_negative",
    ),
    pytest.param(
        "{task: tabular, n_cont: 3, n_cat: 2, cardinality: 1, batch_size: 8}",
        "models[0].cardinality is 1, but it must be an integer of at least 2 (categories per categorical column)",
        id="cardinality_one",
    ),
    pytest.param(
        "{task: tabular, n_cont: 3, n_cat: 2, layers: [200, 0], batch_size: 8}",
        "models[0].layers is [200, 0], but it must be a list of positive layer sizes such as [200, 100], "
        "or a list of such lists to compare several",
        id="layers_zero",
    ),
    pytest.param(
        "{task: tabular, n_cont: 3, n_cat: 2, arch: resnet18, batch_size: 8}",
        "models[0].arch is not a key of a tabular entry. Its keys: task, n_cont, n_cat, cardinality, layers, "
        "classes, batch_size, precision, fit, valid_batch_size, grad_accumulation, dataset_size",
        id="arch_on_tabular",
    ),
    pytest.param(
        "{task: segmentation, arch: timm/resnet18, image_size: 32, batch_size: 8}",
        "models[0].arch is 'timm/resnet18', but timm models are supported for classification only",
        id="timm_segmentation",
    ),
    pytest.param(
        "{task: classification, arch: timm/resnet19, image_size: 32, batch_size: 8}",
        "models[0].arch is 'timm/resnet19', which is not a timm model (did you mean 'resnet18'?). "
        "timm.list_models() lists them",
        id="timm_unknown",
    ),
    # Learner factories.
    pytest.param(
        "{learner: no_such_module:make, batch_size: 8}",
        "models[0].learner is 'no_such_module:make', but module 'no_such_module' cannot be imported "
        "(ModuleNotFoundError: No module named 'no_such_module'). Install it, add its folder to PYTHONPATH, "
        "or put it next to the grid file",
        id="learner_module",
    ),
    pytest.param(
        "{learner: own_learner:make_lerner, batch_size: 8}",
        "models[0].learner is 'own_learner:make_lerner', but module 'own_learner' has no attribute 'make_lerner'",
        id="learner_function",
    ),
    pytest.param(
        "{learner: own_learner, batch_size: 8}",
        "models[0].learner is 'own_learner', but 'own_learner' is not a factory name: write module:function, "
        "for example my_project.learners:make_learner",
        id="learner_no_colon",
    ),
    pytest.param(
        "{learner: own_learner:PAD, batch_size: 8}",
        "models[0].learner is 'own_learner:PAD', but 'own_learner:PAD' is not callable (its type is int): "
        "it must be a function that returns a Learner",
        id="learner_not_callable",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, batch_size: 8, params: {colour: red}}",
        "models[0].learner is 'own_learner:make_learner', but it does not accept the keyword argument colour: "
        "a factory receives batch_size, image_size and seq_len where the entry sets them, and every key in params; "
        "add them to its parameters or take **kwargs",
        id="learner_keyword",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, batch_size: 8, image_size: 64}",
        "models[0].learner is 'own_learner:make_learner', but it does not accept the keyword argument image_size: "
        "a factory receives batch_size, image_size and seq_len where the entry sets them, and every key in params; "
        "add them to its parameters or take **kwargs",
        id="learner_image_size",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, task: classification, batch_size: 8}",
        "models[0] sets both task and learner: a learner entry's factory builds the Learner, so remove task "
        "(or remove learner to use fastai's own learner for the task)",
        id="learner_and_task",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, batch_size: 8, params: {max_tokens: [100, [200]]}}",
        "models[0].params.max_tokens[1] is [200], but a parameter must be a number, a string or true/false",
        id="params_nested",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, batch_size: 8, params: {batch_size: 4}}",
        "models[0].params.batch_size repeats a grid key: set batch_size on the entry itself",
        id="params_grid_key",
    ),
    pytest.param(
        "{learner: own_learner:make_learner, batch_size: 8, stages: []}",
        "models[0].stages is not a key of a learner entry. Its keys: learner, image_size, seq_len, params, "
        "batch_size, precision, fit, valid_batch_size, grad_accumulation, dataset_size",
        id="learner_stages",
    ),
]


@pytest.mark.parametrize(("entry", "expected"), BAD_ENTRIES)
def test_bad_entry_names_the_problem(entry: str, expected: str) -> None:
    assert problems_of(model_grid(entry)) == [expected]


def test_factory_missing_argument(tmp_path: Path) -> None:
    (tmp_path / "needs_width.py").write_text("def make(batch_size, width):\n    raise AssertionError('not called')\n")
    grid = model_grid("{learner: needs_width:make, batch_size: 8}")

    assert problems_of(grid, folder=tmp_path) == [
        "models[0].learner is 'needs_width:make', but it needs width, which the entry does not give: "
        "add it to params, or give the parameter a default"
    ]


def test_factory_that_fails_to_import_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import fastai\nraise RuntimeError('no GPU driver here')\n")

    [problem] = problems_of(model_grid("{learner: broken:make, batch_size: 8}"), folder=tmp_path)

    assert "module 'broken' cannot be imported (RuntimeError: no GPU driver here)" in problem


def test_factory_found_next_to_the_grid_file(tmp_path: Path) -> None:
    (tmp_path / "beside.py").write_text("def make(batch_size, **params):\n    pass\n")
    path = tmp_path / "grid.yaml"
    path.write_text(model_grid("{learner: beside:make, batch_size: [8, 16], params: {width: [1, 2], act: relu}}"))

    grid = load_grid(path)

    assert [(point.batch_size, point.params) for point in grid.points] == [
        (8, (("width", 1), ("act", "relu"))),
        (8, (("width", 2), ("act", "relu"))),
        (16, (("width", 1), ("act", "relu"))),
        (16, (("width", 2), ("act", "relu"))),
    ]
    point = grid.points[1]
    assert (point.task, point.arch, point.image_size, point.classes) == ("learner", "beside:make", None, None)
    assert str(tmp_path) in point.learner_paths
    assert point.factory_arguments == {"batch_size": 8, "width": 2, "act": "relu"}
    assert point.as_row()["params"] == "width=2, act=relu"


def test_text_and_tabular_expansion() -> None:
    grid = parse_grid(
        CARDS
        + "trial: {scan_batches: 4}\n"
        + "models:\n"
        + "  - {task: language_model, arch: AWD_LSTM, seq_len: [72, 144], batch_size: 16}\n"
        + "  - {task: text_classifier, arch: AWD_LSTM, seq_len: 400, batch_size: 8, vocab_size: 1000, classes: 5}\n"
        + "  - {task: tabular, n_cont: 4, n_cat: [0, 3], layers: [[200, 100], [400]], batch_size: 64}\n"
    )

    language, longer, classifier, *tables = grid.points
    assert (language.seq_len, longer.seq_len, language.vocab_size, language.classes) == (72, 144, DEFAULT_VOCAB_SIZE, None)
    assert language.image_size is None
    assert language.scan_batches == 4
    assert (classifier.vocab_size, classifier.classes, classifier.seq_len) == (1000, 5, 400)
    assert [(table.n_cat, table.layers) for table in tables] == [
        (0, (200, 100)),
        (0, (400,)),
        (3, (200, 100)),
        (3, (400,)),
    ]
    assert tables[0].arch == "TabularModel"
    assert tables[0].classes == 2
    assert tables[0].cardinality == 10
    assert tables[1].as_row()["layers"] == "400"
    assert tables[0].describe() == "tabular TabularModel 4 cont + 0 cat columns x 10, layers 200,100 bs=64 fp32"


def test_default_layers_match_fastai() -> None:
    import inspect

    from fastai.tabular.learner import tabular_learner

    # tabular_learner sets layers=[200, 100] when it is given None.
    source = inspect.getsource(tabular_learner).replace(" ", "")
    assert f"layers={list(DEFAULT_LAYERS)}".replace(" ", "") in source


def test_batch_size_search_on_text_entry() -> None:
    grid = parse_grid(model_grid("{task: language_model, arch: AWD_LSTM, seq_len: 72, batch_size: auto, dataset_size: 100}"))

    [search] = grid.searches
    assert search.dimension == "batch_size"
    assert search.bounds.maximum == 100
    assert isinstance(search.point, TrialSpec) and search.point.seq_len == 72


def test_sizing_rejects_a_text_entry() -> None:
    text = model_grid("{task: language_model, arch: AWD_LSTM, seq_len: 72, batch_size: auto}") + (
        "sizing: {targets: [{model: 0, global_batch_size: 256}]}\n"
    )

    assert problems_of(text) == [
        "sizing.targets[0].model is 0, a language_model entry, but sizing supports classification "
        "and segmentation entries only"
    ]


def test_example_factory_grid_parses() -> None:
    grid = load_grid(EXAMPLES / "own_learner.yaml")

    assert {point.task for point in grid.points} == {"learner"}
    assert len(grid.points) == 4
    assert len(grid.searches) == 1


def test_seq_len_search_bounds() -> None:
    grid = parse_grid(model_grid("{task: language_model, arch: AWD_LSTM, seq_len: auto, batch_size: 32}"))

    [search] = grid.searches
    assert search.dimension == "seq_len"
    assert (search.bounds.minimum, search.bounds.maximum, search.bounds.multiple_of) == (8, 4096, 8)
    assert search.point.batch_size == 32


def test_two_searched_keys_rejected() -> None:
    entry = "{task: text_classifier, arch: AWD_LSTM, seq_len: auto, batch_size: auto}"

    assert problems_of(model_grid(entry)) == [
        "models[0] sets both batch_size and seq_len to auto: search one of them, with the other fixed"
    ]
