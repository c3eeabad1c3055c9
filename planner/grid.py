"""The grid file: parse, validate and expand it into trial specs.

The grid is the contract between the driver and the workers: workers receive
``TrialSpec`` values and never read the file themselves. Every check runs here,
before any Ray or GPU work, and each problem names its place in the file.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from planner.architectures import ARCHITECTURES
from planner.cards import CATALOG, Card, parse_memory
from planner.factories import FactoryError, check_arguments, load_factory
from planner.tasks import (
    DEFAULT_CARDINALITY,
    DEFAULT_CLASSES,
    DEFAULT_LAYERS,
    DEFAULT_VOCAB_SIZE,
    INPUT_SIZE_KEYS,
    LEARNER_TASK,
    TABULAR_ARCHITECTURE,
    TASKS,
    TEXT_ARCHITECTURES,
    TEXT_TASKS,
    VISION_TASKS,
    allowed_keys,
    describe_task_keys,
    required_keys,
)

Task = Literal["classification", "segmentation", "text_classifier", "language_model", "tabular", "learner"]
Precision = Literal["fp32", "fp16", "bf16"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
LOCAL_CARD = "local"

_TOP_KEYS = ("cards", "trial", "models", "headroom", "sizing")
_TRIAL_KEYS = ("train_batches", "valid_batches", "timeout_seconds", "repeats", "scan_batches")
_CARD_KEYS = ("name", "memory", "overhead", "backend")
CARD_BACKENDS = ("emulated", "simulated")
_MODEL_KEYS = (
    "task",
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "classes",
    "dataset_size",
    "fit",
    "stages",
    "valid_batch_size",
    "grad_accumulation",
    "seq_len",
    "vocab_size",
    "n_cont",
    "n_cat",
    "cardinality",
    "layers",
    "learner",
    "params",
)
# Keys whose lists are grid dimensions: every combination is one trial.
_DIMENSIONS = (
    "arch",
    "image_size",
    "batch_size",
    "precision",
    "classes",
    "fit",
    "valid_batch_size",
    "grad_accumulation",
    "seq_len",
    "vocab_size",
    "n_cont",
    "n_cat",
    "cardinality",
    "layers",
)
FITS = ("fit_one_cycle", "fine_tune", "lr_find")
_STAGE_KEYS = ("image_size", "batch_size")
_AUTO_KEYS = ("auto", "min", "max", "multiple_of")
SEARCHABLE = ("batch_size", "image_size", "seq_len")
# Scalar types a params value may have: they travel to workers and into tables.
_PARAM_TYPES = (bool, int, float, str)


class GridError(ValueError):
    """Invalid grid file. ``problems`` lists one message per invalid value."""

    def __init__(self, problems: list[str], source: str = "grid") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {problem}" for problem in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n{lines}")


@dataclass(frozen=True)
class TrialSettings:
    """How long each trial runs before it is stopped."""

    train_batches: int = 2
    valid_batches: int = 1
    # A job (one trial, or one simulated grid point for all its cards) that
    # runs longer is stopped and recorded as an error.
    timeout_seconds: float | None = 600.0
    # How often a search runs each probed size; the highest peak counts.
    repeats: int = 1
    # Batches of a user's DataLoader scanned for the largest one.
    scan_batches: int = 32


@dataclass(frozen=True)
class TrialSpec:
    """One grid point: everything a worker needs to build and fit the Learner."""

    task: Task
    arch: str  # for a learner entry, its factory as module:function
    image_size: int | None  # pixels per side; None for tasks without images
    batch_size: int
    precision: Precision = "fp32"
    classes: int = 10
    train_batches: int = 2
    valid_batches: int = 1
    entry: int = 0  # index of the model entry in the grid file
    fit: str = "fit_one_cycle"  # the fit the user runs: fit_one_cycle, fine_tune (frozen, then unfrozen) or lr_find
    # Progressive resizing: (image_size, batch_size) of each later fit on the
    # same Learner. The first stage is image_size and batch_size above.
    later_stages: tuple[tuple[int, int], ...] = ()
    valid_batch_size: int | None = None  # None: fastai's default, the train batch size
    grad_accumulation: int = 1  # batches per optimizer step (fastai's GradientAccumulation)
    # Text: tokens per sequence. A language model's batches are batch_size x
    # seq_len tokens (fastai's seq_len). Every synthetic document of a
    # classifier is seq_len tokens long, so every batch is a worst-case batch.
    seq_len: int | None = None
    vocab_size: int | None = None  # text: tokens in the vocabulary, which sizes the embedding and decoder
    n_cont: int | None = None  # tabular: continuous columns
    n_cat: int | None = None  # tabular: categorical columns
    cardinality: int | None = None  # tabular: categories in each categorical column
    layers: tuple[int, ...] | None = None  # tabular: hidden layer sizes
    # A learner entry's extra keyword arguments for its factory, in file order.
    params: tuple[tuple[str, Any], ...] = ()
    # Folders searched first when a worker imports a learner factory: the grid
    # file's folder and the driver's working directory.
    learner_paths: tuple[str, ...] = field(default=(), compare=False)
    scan_batches: int = 32  # a user DataLoader's batches scanned for the largest one

    @property
    def factory_arguments(self) -> dict[str, Any]:
        """Keyword arguments a learner factory receives for this point."""
        arguments: dict[str, Any] = {"batch_size": self.batch_size}
        if self.image_size is not None:
            arguments["image_size"] = self.image_size
        if self.seq_len is not None:
            arguments["seq_len"] = self.seq_len
        arguments.update(self.params)
        return arguments

    def size_fields(self) -> dict[str, Any]:
        """Return the fields, other than batch_size, that size this point's inputs and model, where set."""
        row = self.as_row()
        return {key: row[key] for key in ("image_size", *INPUT_SIZE_KEYS) if row[key] is not None}

    def describe(self) -> str:
        """Return the point in a few words: task, model, input size, batch size and precision."""
        if self.task in TEXT_TASKS:
            size = f"{self.seq_len} tokens"
        elif self.task == "tabular":
            layers = ",".join(str(width) for width in self.layers or ())
            size = f"{self.n_cont} cont + {self.n_cat} cat columns x {self.cardinality}, layers {layers}"
        elif self.image_size is not None:
            size = f"{self.image_size}px"
        else:
            size = ""
        extra = " ".join(f"{key}={value}" for key, value in self.params)
        parts = [self.task, self.arch, size, f"bs={self.batch_size}", self.precision, extra]
        return " ".join(part for part in parts if part)

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step."""
        return self.batch_size * self.grad_accumulation

    @property
    def stages(self) -> tuple[tuple[int, int], ...]:
        """(image_size, batch_size) of every fit of a progressive-resizing trial, the first included."""
        return ((self.image_size, self.batch_size), *self.later_stages)

    def as_row(self) -> dict[str, Any]:
        """Return the fields that identify this point in a result row."""
        row = asdict(self)
        # The result's valid_batch_size is what fastai used; this is what the grid set.
        row["requested_valid_batch_size"] = row.pop("valid_batch_size")
        row["later_stages"] = " ".join(f"{size}px/bs{batch}" for size, batch in self.later_stages) or None
        row["effective_batch_size"] = self.effective_batch_size
        row["layers"] = ",".join(str(size) for size in self.layers) if self.layers else None
        row["params"] = ", ".join(f"{key}={value}" for key, value in self.params) or None
        del row["learner_paths"]
        return row


@dataclass(frozen=True)
class AutoRange:
    """The sizes a search may probe: multiples of ``multiple_of`` from ``minimum`` to ``maximum``."""

    minimum: int
    maximum: int
    multiple_of: int = 1
    capped_by: str | None = None  # "dataset_size" when the dataset, not max, set the maximum


# Defaults of `batch_size: auto`, `image_size: auto` and `seq_len: auto`.
# Batches start at 2 because batch norm cannot train on one sample per
# channel. Image sizes step by 32 pixels, the output stride of most
# torchvision backbones. Sequence lengths step by 8 tokens.
AUTO_DEFAULTS = {
    "batch_size": AutoRange(2, 4096, 1),
    "image_size": AutoRange(32, 1024, 32),
    "seq_len": AutoRange(8, 4096, 8),
}


@dataclass(frozen=True)
class SearchSpec:
    """A search for the largest ``dimension`` that fits, with every other grid value fixed.

    ``point`` contains the fixed values; its ``dimension`` field is a placeholder.
    """

    point: TrialSpec
    dimension: Literal["batch_size", "image_size", "seq_len"]
    bounds: AutoRange


@dataclass(frozen=True)
class Headroom:
    """Memory an answer must leave free on a card: a fraction of its memory or a byte count."""

    fraction: float = 0.0
    nbytes: int = 0

    def bytes_for(self, memory_bytes: int) -> int:
        return int(self.fraction * memory_bytes) + self.nbytes

    def describe(self) -> str:
        if self.fraction:
            return f"{self.fraction * 100:g}% of card memory"
        if self.nbytes:
            from planner.cards import format_bytes

            return format_bytes(self.nbytes)
        return "none"


@dataclass(frozen=True)
class Grid:
    """A validated grid: the cards to plan for and the points to run on each."""

    cards: tuple[Card, ...]
    local: bool  # True when the grid lists the card "local", the GPUs Ray finds
    trial: TrialSettings
    points: tuple[TrialSpec, ...]
    source: str = "grid"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    searches: tuple[SearchSpec, ...] = ()
    headroom: Headroom = Headroom()
    sizing: Any = None  # planner.sizing.SizingSpec, when the grid has a sizing section


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file. Raises ``GridError`` on any invalid value."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GridError([f"grid file {str(path)!r} not found"], str(path)) from None
    except OSError as error:
        raise GridError([f"cannot read grid file: {error.strerror}"], str(path)) from None
    return parse_grid(text, source=str(path), folder=path.resolve().parent)


def parse_grid(text: str, *, source: str = "grid", folder: Path | None = None) -> Grid:
    """Parse grid YAML text and validate every value before returning it.

    ``folder`` is where the grid file lies: learner factories next to it
    import without being installed.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise GridError([f"invalid YAML: {_yaml_problem(error)}"], source) from None
    problems: list[str] = []
    paths = tuple(dict.fromkeys(str(path) for path in (folder, Path.cwd()) if path is not None))
    grid = _validate(document, problems, source, paths)
    if problems:
        raise GridError(problems, source)
    assert grid is not None
    return grid


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


def _validate(document: Any, problems: list[str], source: str, learner_paths: tuple[str, ...]) -> Grid | None:
    if document is None:
        problems.append("the file is empty: a grid needs the keys cards and models")
        return None
    if not isinstance(document, dict):
        problems.append(
            f"the file must be a mapping with keys {', '.join(_TOP_KEYS)}, "
            f"got {type(document).__name__}"
        )
        return None
    _check_keys(document, "", _TOP_KEYS, problems)
    for key in ("cards", "models"):
        if key not in document:
            problems.append(f"{key} is missing: a grid needs {_describe_required(key)}")

    # A missing key is reported above, so it is not parsed again as an empty list.
    cards, local = _parse_cards(document["cards"], problems) if "cards" in document else ([], False)
    trial = _parse_trial(document.get("trial", {}), problems)
    context = _ModelContext(trial, learner_paths)
    points, searches = _parse_models(document["models"], context, problems) if "models" in document else ([], [])
    headroom = _parse_headroom(document["headroom"], problems) if "headroom" in document else Headroom()
    sizing = None
    if "sizing" in document:
        from planner.sizing import parse_sizing  # imports this module

        names = None if local else [card.name for card in cards]
        sizing = parse_sizing(document["sizing"], problems, models=document.get("models"), cards=names)
    return Grid(tuple(cards), local, trial, tuple(points), source, document, tuple(searches), headroom, sizing)


def _parse_headroom(value: Any, problems: list[str]) -> Headroom:
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            percent = -1.0
        if 0 <= percent < 100:
            return Headroom(fraction=percent / 100)
    elif value == 0 or value == "0":
        return Headroom()
    else:
        try:
            return Headroom(nbytes=parse_memory(value))
        except ValueError:
            pass
    problems.append(
        f"headroom is {value!r}, but it must be a percent of card memory from 0% to below 100% "
        f"(for example 10%), or a memory size (for example 1GiB)"
    )
    return Headroom()


def _describe_required(key: str) -> str:
    if key == "cards":
        return "a list of cards, for example cards: [local, A100-40GB, {name: small, memory: 4GiB}]"
    return "a list of model entries, each with task, arch, image_size and batch_size"


def _check_keys(mapping: dict, place: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    for key in mapping:
        if key not in allowed:
            where = f"{place}.{key}" if place else str(key)
            hint = _did_you_mean(str(key), allowed)
            problems.append(f"{where} is not a known key{hint}. Known keys: {', '.join(allowed)}")


def _did_you_mean(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_cards(value: Any, problems: list[str]) -> tuple[list[Card], bool]:
    cards: list[Card] = []
    local = False
    if not isinstance(value, list) or not value:
        problems.append(
            f"cards is {value!r}, but it must be a non-empty list of catalog names, "
            f"{LOCAL_CARD!r} or inline cards such as {{name: small, memory: 4GiB}}"
        )
        return cards, local
    names: set[str] = set()
    for index, item in enumerate(value):
        place = f"cards[{index}]"
        card: Card | None = None
        if item == LOCAL_CARD:
            local = True
            continue
        if isinstance(item, str):
            card = CATALOG.get(item)
            if card is None:
                hint = _did_you_mean(item, list(CATALOG))
                problems.append(
                    f"{place} is {item!r}, which is not a catalog card{hint}. "
                    f"Use one of {', '.join(CATALOG)}, {LOCAL_CARD!r}, "
                    f"or an inline card such as {{name: {item}, memory: 24GiB}}"
                )
        elif isinstance(item, dict):
            card = _parse_inline_card(item, place, problems)
        else:
            problems.append(
                f"{place} is {item!r}, but a card must be a catalog name or a mapping "
                f"with name and memory"
            )
        if card is not None:
            if card.name in names:
                problems.append(f"{place} repeats the card name {card.name!r}: card names must be unique")
            names.add(card.name)
            cards.append(card)
    return cards, local


def _parse_inline_card(item: dict, place: str, problems: list[str]) -> Card | None:
    _check_keys(item, place, _CARD_KEYS, problems)
    name = item.get("name")
    ok = True
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{place}.name is {name!r}, but an inline card needs a non-empty name")
        ok = False
    elif name == LOCAL_CARD:
        problems.append(f"{place}.name is {LOCAL_CARD!r}, which is reserved for the GPUs Ray finds")
        ok = False
    if "memory" not in item:
        problems.append(
            f"{place}.memory is missing: an inline card needs its memory, for example memory: 16GiB"
        )
        return None
    memory = _parse_memory_field(item["memory"], f"{place}.memory", problems)
    overhead = 0
    if "overhead" in item:
        overhead = _parse_memory_field(item["overhead"], f"{place}.overhead", problems) or 0
    if memory is None or not ok:
        return None
    backend = item.get("backend")
    if backend is not None and backend not in CARD_BACKENDS:
        problems.append(
            f"{place}.backend is {backend!r}, which is not a backend for an inline card. "
            f"Use one of {', '.join(CARD_BACKENDS)}"
        )
        return None
    if overhead >= memory:
        problems.append(
            f"{place}.overhead is {item['overhead']!r}, which leaves no memory of "
            f"{item['memory']!r} for trials: it must be smaller than memory"
        )
        return None
    return Card(name, memory, overhead, "inline", backend=backend)


def _parse_memory_field(value: Any, place: str, problems: list[str]) -> int | None:
    try:
        return parse_memory(value)
    except ValueError:
        problems.append(
            f"{place} is {value!r}, which is not a memory size. Use a positive number "
            f"with a unit such as 512MiB, 16GiB or 40GB (GB = 10^9 bytes, GiB = 2^30 bytes), "
            f"or a plain number of bytes"
        )
        return None


def _parse_trial(value: Any, problems: list[str]) -> TrialSettings:
    if not isinstance(value, dict):
        problems.append(
            f"trial is {value!r}, but it must be a mapping such as "
            f"{{train_batches: 2, valid_batches: 1}}"
        )
        return TrialSettings()
    _check_keys(value, "trial", _TRIAL_KEYS, problems)
    settings = TrialSettings()
    train = value.get("train_batches", settings.train_batches)
    valid = value.get("valid_batches", settings.valid_batches)
    # Adam-style optimizers allocate their state on the first step, so the
    # steady-state peak only shows in the second train batch.
    if not _is_int(train) or train < 2:
        problems.append(
            f"trial.train_batches is {train!r}, but it must be an integer of at least 2, "
            f"so that the optimizer steps twice and its state exists"
        )
        train = settings.train_batches
    if not _is_int(valid) or valid < 0:
        problems.append(
            f"trial.valid_batches is {valid!r}, but it must be a non-negative integer "
            f"(0 skips validation)"
        )
        valid = settings.valid_batches
    repeats = value.get("repeats", settings.repeats)
    if not _is_int(repeats) or repeats < 1:
        problems.append(f"trial.repeats is {repeats!r}, but it must be a positive integer")
        repeats = settings.repeats
    timeout = value.get("timeout_seconds", settings.timeout_seconds)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        problems.append(
            f"trial.timeout_seconds is {timeout!r}, but it must be a positive number of seconds, "
            f"or null for no limit"
        )
        timeout = settings.timeout_seconds
    scan = value.get("scan_batches", settings.scan_batches)
    if not _is_int(scan) or scan < 1:
        problems.append(
            f"trial.scan_batches is {scan!r}, but it must be a positive integer (batches of a learner "
            f"factory's DataLoaders scanned for the largest one)"
        )
        scan = settings.scan_batches
    return TrialSettings(train, valid, timeout, repeats, scan)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_models(
    value: Any, context: _ModelContext, problems: list[str]
) -> tuple[list[TrialSpec], list[SearchSpec]]:
    if not isinstance(value, list) or not value:
        problems.append(
            f"models is {value!r}, but it must be a non-empty list of model entries, "
            f"each with task, arch, image_size and batch_size"
        )
        return [], []
    points: list[TrialSpec] = []
    searches: list[SearchSpec] = []
    for index, entry in enumerate(value):
        entry_points, entry_searches = _parse_model(entry, index, context, problems)
        points.extend(entry_points)
        searches.extend(entry_searches)
    return points, searches


def _is_auto(value: Any) -> bool:
    return value == "auto" or isinstance(value, dict)


def _parse_auto(value: Any, key: str, place: str, problems: list[str]) -> AutoRange | None:
    """Parse ``auto`` or ``{auto: true, min:, max:, multiple_of:}`` for a searchable key."""
    defaults = AUTO_DEFAULTS[key]
    if value == "auto":
        return defaults
    _check_keys(value, place, _AUTO_KEYS, problems)
    if value.get("auto") is not True:
        problems.append(f"{place}.auto is {value.get('auto')!r}, but a search needs auto: true")
        return None
    bounds = {}
    for name, default in (("min", defaults.minimum), ("max", defaults.maximum), ("multiple_of", defaults.multiple_of)):
        number = value.get(name, default)
        if not _is_int(number) or number <= 0:
            problems.append(f"{place}.{name} is {number!r}, but it must be a positive integer")
            return None
        bounds[name] = number
    if bounds["min"] > bounds["max"]:
        problems.append(f"{place}.min is {bounds['min']}, which is above {place}.max {bounds['max']}")
        return None
    # Probed sizes are multiples of multiple_of; the smallest one must not pass max.
    lowest = -(-bounds["min"] // bounds["multiple_of"]) * bounds["multiple_of"]
    if lowest > bounds["max"]:
        problems.append(
            f"{place} has no multiple of {bounds['multiple_of']} between min {bounds['min']} "
            f"and max {bounds['max']}"
        )
        return None
    return AutoRange(lowest, bounds["max"], bounds["multiple_of"])


def _parse_model(
    entry: Any, index: int, context: _ModelContext, problems: list[str]
) -> tuple[list[TrialSpec], list[SearchSpec]]:
    place = f"models[{index}]"
    if not isinstance(entry, dict):
        problems.append(
            f"{place} is {entry!r}, but a model entry must be a mapping with "
            f"task, arch, image_size and batch_size"
        )
        return [], []
    task = _parse_task(entry, place, problems)
    if task is None:
        _check_keys(entry, place, _MODEL_KEYS, problems)
        return [], []
    allowed = allowed_keys(task)
    keys = allowed if task == LEARNER_TASK else ("task", *allowed)
    for key in entry:
        if key not in _MODEL_KEYS:
            hint = _did_you_mean(str(key), keys)
            problems.append(f"{place}.{key} is not a known key{hint}. Keys of a {task} entry: {', '.join(keys)}")
        elif key != "task" and key not in allowed:
            problems.append(f"{place}.{key} is not a key of a {task} entry. Its keys: {', '.join(keys)}")
    stages = _parse_stages(entry, place, problems) if "stages" in entry and "stages" in allowed else None
    missing = [
        key for key in required_keys(task) if key not in entry and (stages is None or key not in _STAGE_KEYS)
    ]
    for key in missing:
        problems.append(f"{place}.{key} is missing: a {task} entry needs {describe_task_keys(task)}")

    searched, bounds, invalid = _parse_searched(entry, place, task, problems)
    values: dict[str, list[Any]] = {}
    for key in _DIMENSIONS:
        if key not in entry or key not in allowed or (stages is not None and key in _STAGE_KEYS):
            continue
        if key in SEARCHABLE and _is_auto(entry[key]):
            continue  # a search, parsed above
        items = _dimension_values(entry, key, place, problems)
        if items is None:
            invalid = True
            continue
        checked = [item for item, where in items if _check_value(key, item, where, task, problems)]
        invalid = invalid or len(checked) != len(items)
        values[key] = checked

    params = _parse_params(entry, place, problems) if "params" in entry and "params" in allowed else {}
    invalid = invalid or params is None
    learner_paths: tuple[str, ...] = ()
    if task == LEARNER_TASK and "learner" in entry:
        learner_paths = context.learner_paths
        arguments = ["batch_size", *(key for key in ("image_size", "seq_len") if key in entry), *(params or {})]
        invalid = not _check_learner(entry["learner"], f"{place}.learner", arguments, learner_paths, problems) or invalid

    dataset_size = entry.get("dataset_size")
    if dataset_size is not None and (not _is_int(dataset_size) or dataset_size <= 0):
        problems.append(f"{place}.dataset_size is {dataset_size!r}, but it must be a positive integer (training samples)")
        invalid = True

    if task == "tabular" and 0 in values.get("n_cont", ()) and 0 in values.get("n_cat", ()):
        problems.append(f"{place} has a point with n_cont 0 and n_cat 0: a table needs at least one column")
        invalid = True
    if missing or invalid:
        return [], []
    if stages is not None and (searched is not None or stages is False):
        if searched is not None:
            problems.append(f"{place}.stages cannot be combined with a search: give fixed sizes in each stage")
        return [], []
    _fill_defaults(values, task, entry)
    later: tuple[tuple[int, int], ...] = ()
    if stages:
        (first_size, first_batch), *rest = stages
        values["image_size"], values["batch_size"] = [first_size], [first_batch]
        later = tuple(rest)
    if searched is not None:
        # A batch cannot hold more samples than the training set (fastai drops the last partial batch).
        if searched == "batch_size" and dataset_size is not None and dataset_size < bounds.maximum:
            if dataset_size < bounds.minimum:
                problems.append(
                    f"{place}.dataset_size is {dataset_size}, below the smallest batch size the search may probe "
                    f"({bounds.minimum})"
                )
                return [], []
            bounds = AutoRange(bounds.minimum, dataset_size, bounds.multiple_of, "dataset_size")
        values[searched] = [bounds.minimum]  # placeholder, replaced by each probe
    fixed = dict(
        task=task,
        train_batches=context.trial.train_batches,
        valid_batches=context.trial.valid_batches,
        entry=index,
        later_stages=later,
        learner_paths=learner_paths,
        scan_batches=context.trial.scan_batches,
    )
    param_names = list(params or {})
    keys = [*values, *param_names]
    lists = [*values.values(), *(params or {}).values()]
    specs = []
    for combination in itertools.product(*lists):
        point = dict(zip(keys, combination))
        point_params = tuple((name, point.pop(name)) for name in param_names)
        specs.append(TrialSpec(**fixed, **point, params=point_params))
    if searched is None:
        return specs, []
    return [], [SearchSpec(spec, searched, bounds) for spec in specs]


@dataclass(frozen=True)
class _ModelContext:
    """Settings shared by the parse of every model entry."""

    trial: TrialSettings
    learner_paths: tuple[str, ...]  # folders to import learner factories from


def _parse_task(entry: dict, place: str, problems: list[str]) -> str | None:
    """Return the entry's task, ``learner`` for a factory entry, or None when it is missing or unknown."""
    if "learner" in entry:
        if "task" in entry:
            problems.append(
                f"{place} sets both task and learner: a learner entry's factory builds the Learner, "
                f"so remove task (or remove learner to use fastai's own learner for the task)"
            )
            return None
        return LEARNER_TASK
    if "task" not in entry:
        problems.append(
            f"{place}.task is missing: every model entry needs a task ({', '.join(TASKS)}) "
            f"or a learner factory (learner: module:function)"
        )
        return None
    task = entry["task"]
    if task not in TASKS:
        hint = _did_you_mean(str(task), TASKS)
        problems.append(f"{place}.task is {task!r}, which is not a known task{hint}. Use one of {', '.join(TASKS)}")
        return None
    return task


def _dimension_values(entry: dict, key: str, place: str, problems: list[str]) -> list[tuple[Any, str]] | None:
    """Return each value of a grid dimension with its place, or None for an empty list.

    A scalar is placed without an index, a list item with its index. ``layers``
    is a list itself: a list of numbers is one value, a list of lists is a dimension.
    """
    value = entry[key]
    if key == "layers" and not (isinstance(value, list) and value and all(isinstance(item, list) for item in value)):
        return [(value, f"{place}.{key}")]
    if not isinstance(value, list):
        return [(value, f"{place}.{key}")]
    if not value:
        problems.append(f"{place}.{key} is an empty list: give at least one value")
        return None
    return [(item, f"{place}.{key}[{position}]") for position, item in enumerate(value)]


def _fill_defaults(values: dict[str, list[Any]], task: str, entry: dict) -> None:
    """Give every dimension the entry leaves out its default, and set what the task fixes."""
    values.setdefault("precision", ["fp32"])
    values.setdefault("fit", ["fit_one_cycle"])
    values.setdefault("valid_batch_size", [None])
    values.setdefault("grad_accumulation", [1])
    # None for a language model (its vocabulary is its output) and a factory's Learner.
    values.setdefault("classes", [DEFAULT_CLASSES.get(task)])
    if task in TEXT_TASKS:
        values.setdefault("vocab_size", [DEFAULT_VOCAB_SIZE])
    if task == "tabular":
        values["arch"] = [TABULAR_ARCHITECTURE]
        values.setdefault("cardinality", [DEFAULT_CARDINALITY])
        values.setdefault("layers", [DEFAULT_LAYERS])
        values["layers"] = [tuple(layers) for layers in values["layers"]]
    if task == LEARNER_TASK:
        values["arch"] = [entry["learner"]]
        values.setdefault("image_size", [None])
    if task not in VISION_TASKS and task != LEARNER_TASK:
        values["image_size"] = [None]


def _parse_params(entry: dict, place: str, problems: list[str]) -> dict[str, list[Any]] | None:
    """Parse a learner entry's params: names to a scalar or a list of scalars (a grid dimension)."""
    value = entry["params"]
    if not isinstance(value, dict) or not value:
        problems.append(
            f"{place}.params is {value!r}, but it must be a mapping of keyword arguments for the factory, "
            f"such as {{width: [64, 128], depth: 4}}"
        )
        return None
    params: dict[str, list[Any]] = {}
    ok = True
    for name, item in value.items():
        where = f"{place}.params.{name}"
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"{where} is not a Python identifier, so it cannot be a keyword argument")
            ok = False
            continue
        if name in ("batch_size", "image_size", "seq_len"):
            problems.append(f"{where} repeats a grid key: set {name} on the entry itself")
            ok = False
            continue
        items = item if isinstance(item, list) else [item]
        if not items:
            problems.append(f"{where} is an empty list: give at least one value")
            ok = False
            continue
        for position, scalar in enumerate(items):
            if not isinstance(scalar, _PARAM_TYPES):
                at = f"{where}[{position}]" if isinstance(item, list) else where
                problems.append(f"{at} is {scalar!r}, but a parameter must be a number, a string or true/false")
                ok = False
        params[name] = items
    return params if ok else None


def _check_learner(
    name: Any, where: str, arguments: list[str], search_paths: tuple[str, ...], problems: list[str]
) -> bool:
    """Import the learner factory and check that it takes the keyword arguments the entry will pass."""
    if not isinstance(name, str):
        problems.append(f"{where} is {name!r}, but it must be a factory name such as my_project.learners:make_learner")
        return False
    try:
        check_arguments(load_factory(name, search_paths), arguments)
    except FactoryError as error:
        problems.append(f"{where} is {name!r}, but {error}")
        return False
    return True


def _parse_stages(entry: dict, place: str, problems: list[str]) -> list[tuple[int, int]] | bool:
    """Parse progressive-resizing stages. Returns False when any stage is invalid."""
    value = entry["stages"]
    if not isinstance(value, list) or len(value) < 2:
        problems.append(
            f"{place}.stages is {value!r}, but it must be a list of at least two stages such as "
            f"[{{image_size: 128, batch_size: 64}}, {{image_size: 224, batch_size: 32}}]"
        )
        return False
    for key in _STAGE_KEYS:
        if key in entry:
            problems.append(f"{place}.{key} is set next to stages: give it in each stage instead")
            return False
    stages = []
    for position, stage in enumerate(value):
        where = f"{place}.stages[{position}]"
        if not isinstance(stage, dict):
            problems.append(f"{where} is {stage!r}, but a stage must be a mapping with image_size and batch_size")
            return False
        _check_keys(stage, where, _STAGE_KEYS, problems)
        sizes = []
        for key in _STAGE_KEYS:
            item = stage.get(key)
            if not _is_int(item) or item <= 0:
                unit = "pixels per side" if key == "image_size" else "samples per batch"
                problems.append(f"{where}.{key} is {item!r}, but it must be a positive integer ({unit})")
                return False
            sizes.append(item)
        stages.append((sizes[0], sizes[1]))
    return stages


def _parse_searched(
    entry: dict, place: str, task: str, problems: list[str]
) -> tuple[str | None, AutoRange | None, bool]:
    """Find the one searched key of a model entry, if any, and its bounds."""
    allowed = allowed_keys(task)
    searched = [key for key in SEARCHABLE if key in entry and key in allowed and _is_auto(entry[key])]
    if len(searched) > 1:
        keys = " and ".join(searched) if len(searched) == 2 else ", ".join(searched)
        problems.append(f"{place} sets both {keys} to auto: search one of them, with the other fixed")
        return None, None, True
    if not searched:
        return None, None, False
    key = searched[0]
    bounds = _parse_auto(entry[key], key, f"{place}.{key}", problems)
    return key, bounds, bounds is None


def _check_value(key: str, item: Any, where: str, task: str, problems: list[str]) -> bool:
    if key == "arch":
        if task in TEXT_TASKS:
            if item not in TEXT_ARCHITECTURES:
                problems.append(
                    f"{where} is {item!r}, which is not a fastai text architecture. Use one of {', '.join(TEXT_ARCHITECTURES)}"
                )
                return False
            return True
        if isinstance(item, str) and item.startswith(TIMM_PREFIX):
            return _check_timm(item, where, task, problems)
        allowed = ARCHITECTURES.get(task, ())
        if item not in allowed:
            hint = _did_you_mean(str(item), allowed)
            problems.append(
                f"{where} is {item!r}, which is not a torchvision architecture that {task} "
                f"supports{hint}. Supported: {', '.join(allowed)}"
            )
            return False
        return True
    if key == "fit":
        if item not in FITS:
            hint = _did_you_mean(str(item), FITS)
            problems.append(f"{where} is {item!r}, which is not a known fit{hint}. Use one of {', '.join(FITS)}")
            return False
        return True
    if key == "precision":
        if item not in PRECISIONS:
            problems.append(f"{where} is {item!r}, which is not a known precision. Use one of {', '.join(PRECISIONS)}")
            return False
        return True
    if key == "layers":
        if not isinstance(item, list) or not item or not all(_is_int(size) and size > 0 for size in item):
            problems.append(
                f"{where} is {item!r}, but it must be a list of positive layer sizes such as [200, 100], "
                f"or a list of such lists to compare several"
            )
            return False
        return True
    # The rest are counts.
    unit, smallest = _COUNTS[key]
    if not _is_int(item) or item < smallest:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(smallest, f"an integer of at least {smallest}")
        problems.append(f"{where} is {item!r}, but it must be {kind} ({unit})")
        return False
    if key == "classes" and item < 2:
        problems.append(f"{where} is {item!r}, but a task needs at least 2 classes")
        return False
    return True


# Count keys: the unit named in messages and the smallest value allowed.
_COUNTS = {
    "image_size": ("pixels per side", 1),
    "batch_size": ("samples per batch", 1),
    "valid_batch_size": ("samples per validation batch", 1),
    "grad_accumulation": ("batches per optimizer step", 1),
    "classes": ("classes", 1),
    "seq_len": ("tokens per sequence", 1),
    # fastai's text vocabulary starts with its special tokens (xxunk, xxpad, ...).
    "vocab_size": ("tokens in the vocabulary, fastai's special tokens included", 16),
    "n_cont": ("continuous columns", 0),
    "n_cat": ("categorical columns", 0),
    "cardinality": ("categories per categorical column", 2),
}

# An arch written timm/NAME is a timm model, which vision_learner builds by name.
TIMM_PREFIX = "timm/"


def _check_timm(item: str, where: str, task: str, problems: list[str]) -> bool:
    if task != "classification":
        problems.append(f"{where} is {item!r}, but timm models are supported for classification only")
        return False
    try:
        import timm
    except ImportError:
        problems.append(
            f"{where} is {item!r}, a timm model, but timm is not installed: pip install 'planner[timm]'"
        )
        return False
    name = item.removeprefix(TIMM_PREFIX)
    if name not in timm.list_models():
        hint = _did_you_mean(name, timm.list_models())
        problems.append(f"{where} is {item!r}, which is not a timm model{hint}. timm.list_models() lists them")
        return False
    return True
