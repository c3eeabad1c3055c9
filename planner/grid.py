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

Task = Literal["classification", "segmentation"]
Precision = Literal["fp32", "fp16", "bf16"]

TASKS: tuple[str, ...] = ("classification", "segmentation")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
LOCAL_CARD = "local"

# Classes of the synthetic labels when a model entry does not set them.
DEFAULT_CLASSES = {"classification": 10, "segmentation": 4}

_TOP_KEYS = ("cards", "trial", "models")
_TRIAL_KEYS = ("train_batches", "valid_batches", "timeout_seconds")
_CARD_KEYS = ("name", "memory", "overhead", "backend")
CARD_BACKENDS = ("emulated", "simulated")
_MODEL_KEYS = ("task", "arch", "image_size", "batch_size", "precision", "classes")
_REQUIRED_MODEL_KEYS = ("task", "arch", "image_size", "batch_size")


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


@dataclass(frozen=True)
class TrialSpec:
    """One grid point: everything a worker needs to build and fit the Learner."""

    task: Task
    arch: str
    image_size: int
    batch_size: int
    precision: Precision = "fp32"
    classes: int = 10
    train_batches: int = 2
    valid_batches: int = 1
    entry: int = 0  # index of the model entry in the grid file

    def as_row(self) -> dict[str, Any]:
        """Return the fields that identify this point in a result row."""
        return asdict(self)


@dataclass(frozen=True)
class Grid:
    """A validated grid: the cards to plan for and the points to run on each."""

    cards: tuple[Card, ...]
    local: bool  # True when the grid asks for the GPUs Ray finds
    trial: TrialSettings
    points: tuple[TrialSpec, ...]
    source: str = "grid"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file. Raises ``GridError`` on any invalid value."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GridError([f"grid file {str(path)!r} not found"], str(path)) from None
    except OSError as error:
        raise GridError([f"cannot read grid file: {error.strerror}"], str(path)) from None
    return parse_grid(text, source=str(path))


def parse_grid(text: str, *, source: str = "grid") -> Grid:
    """Parse grid YAML text and validate every value before returning it."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise GridError([f"invalid YAML: {_yaml_problem(error)}"], source) from None
    problems: list[str] = []
    grid = _validate(document, problems, source)
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


def _validate(document: Any, problems: list[str], source: str) -> Grid | None:
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
    points = _parse_models(document["models"], trial, problems) if "models" in document else []
    return Grid(tuple(cards), local, trial, tuple(points), source, document)


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
    timeout = value.get("timeout_seconds", settings.timeout_seconds)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        problems.append(
            f"trial.timeout_seconds is {timeout!r}, but it must be a positive number of seconds, "
            f"or null for no limit"
        )
        timeout = settings.timeout_seconds
    return TrialSettings(train, valid, timeout)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_models(value: Any, trial: TrialSettings, problems: list[str]) -> list[TrialSpec]:
    if not isinstance(value, list) or not value:
        problems.append(
            f"models is {value!r}, but it must be a non-empty list of model entries, "
            f"each with task, arch, image_size and batch_size"
        )
        return []
    points: list[TrialSpec] = []
    for index, entry in enumerate(value):
        points.extend(_parse_model(entry, index, trial, problems))
    return points


def _as_list(entry: dict, key: str, place: str, problems: list[str]) -> list[Any] | None:
    value = entry[key]
    if isinstance(value, list):
        if not value:
            problems.append(f"{place}.{key} is an empty list: give at least one value")
            return None
        return value
    return [value]


def _parse_model(entry: Any, index: int, trial: TrialSettings, problems: list[str]) -> list[TrialSpec]:
    place = f"models[{index}]"
    if not isinstance(entry, dict):
        problems.append(
            f"{place} is {entry!r}, but a model entry must be a mapping with "
            f"task, arch, image_size and batch_size"
        )
        return []
    _check_keys(entry, place, _MODEL_KEYS, problems)
    missing = [key for key in _REQUIRED_MODEL_KEYS if key not in entry]
    for key in missing:
        problems.append(f"{place}.{key} is missing: every model entry needs {', '.join(_REQUIRED_MODEL_KEYS)}")

    task = entry.get("task")
    if "task" in entry and task not in TASKS:
        hint = _did_you_mean(str(task), TASKS)
        problems.append(f"{place}.task is {task!r}, which is not a known task{hint}. Use one of {', '.join(TASKS)}")
        task = None

    values: dict[str, list[Any]] = {}
    has_empty_list = False
    for key in ("arch", "image_size", "batch_size", "precision", "classes"):
        if key not in entry:
            continue
        items = _as_list(entry, key, place, problems)
        if items is None:
            has_empty_list = True
            continue
        # A scalar is written without an index; a list item with its index.
        listed = isinstance(entry[key], list)
        checked = []
        for position, item in enumerate(items):
            where = f"{place}.{key}[{position}]" if listed else f"{place}.{key}"
            if _check_value(key, item, where, task, problems):
                checked.append(item)
        values[key] = checked

    if missing or task is None or has_empty_list or any(len(items) != len(_as_list_quiet(entry[key])) for key, items in values.items()):
        return []

    values.setdefault("precision", ["fp32"])
    values.setdefault("classes", [DEFAULT_CLASSES[task]])
    combos = itertools.product(
        values["arch"], values["image_size"], values["batch_size"], values["precision"], values["classes"]
    )
    return [
        TrialSpec(task, arch, size, batch, precision, classes, trial.train_batches, trial.valid_batches, index)
        for arch, size, batch, precision, classes in combos
    ]


def _as_list_quiet(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_value(key: str, item: Any, where: str, task: str | None, problems: list[str]) -> bool:
    if key == "arch":
        allowed = ARCHITECTURES.get(task or "", ())
        if task is None:
            return isinstance(item, str)
        if item not in allowed:
            hint = _did_you_mean(str(item), allowed)
            problems.append(
                f"{where} is {item!r}, which is not a torchvision architecture that {task} "
                f"supports{hint}. Supported: {', '.join(allowed)}"
            )
            return False
        return True
    if key == "precision":
        if item not in PRECISIONS:
            problems.append(f"{where} is {item!r}, which is not a known precision. Use one of {', '.join(PRECISIONS)}")
            return False
        return True
    # image_size, batch_size and classes are counts.
    unit = {"image_size": "pixels per side", "batch_size": "samples per batch", "classes": "classes"}[key]
    if not _is_int(item) or item <= 0:
        problems.append(f"{where} is {item!r}, but it must be a positive integer ({unit})")
        return False
    if key == "classes" and item < 2:
        problems.append(f"{where} is {item!r}, but a task needs at least 2 classes")
        return False
    return True
