"""The tasks a model entry can plan for, and the grid keys each one takes.

A task decides how the worker builds the Learner (fastai's ``vision_learner``,
``unet_learner``, ``text_classifier_learner``, ``language_model_learner``,
``tabular_learner``, or the user's own factory) and which keys describe the
size of its inputs: pixels for images, tokens for text, columns for tables.
"""

from __future__ import annotations

VISION_TASKS = ("classification", "segmentation")
TEXT_TASKS = ("text_classifier", "language_model")
TABULAR_TASK = "tabular"
# Entries that give ``learner: module:function`` instead of a task.
LEARNER_TASK = "learner"
TASKS: tuple[str, ...] = (*VISION_TASKS, *TEXT_TASKS, TABULAR_TASK)

# fastai's text architectures that run without a compiled extension (AWD_QRNN
# needs one built for CUDA).
TEXT_ARCHITECTURES = ("AWD_LSTM",)
# The model tabular_learner builds; a tabular entry has no arch key.
TABULAR_ARCHITECTURE = "TabularModel"

# Keys every entry may set, whatever its task.
COMMON_KEYS = ("batch_size", "precision", "fit", "valid_batch_size", "grad_accumulation", "dataset_size")

# The keys that define what a task's entry builds, besides batch_size.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("arch", "image_size"),
    "segmentation": ("arch", "image_size"),
    "text_classifier": ("arch", "seq_len"),
    "language_model": ("arch", "seq_len"),
    "tabular": ("n_cont", "n_cat"),
    LEARNER_TASK: ("learner",),
}

# Task-specific keys that may be left out.
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("classes", "stages"),
    "segmentation": ("classes", "stages"),
    "text_classifier": ("vocab_size", "classes"),
    "language_model": ("vocab_size",),
    "tabular": ("cardinality", "layers", "classes"),
    LEARNER_TASK: ("image_size", "seq_len", "params"),
}

# Keys that size a text, tabular or factory entry's inputs and model, as
# image_size sizes an image entry's. Tables and the resume key list them in this order.
INPUT_SIZE_KEYS = ("seq_len", "vocab_size", "n_cont", "n_cat", "cardinality", "layers", "params")

# Classes of the synthetic labels when a model entry does not set them.
DEFAULT_CLASSES = {"classification": 10, "segmentation": 4, "text_classifier": 2, "tabular": 2}
# fastai's default max_vocab: the vocabulary a text dataset of any size ends up with.
DEFAULT_VOCAB_SIZE = 60_000
# Categories in each synthetic categorical column.
DEFAULT_CARDINALITY = 10
# tabular_learner's default hidden layers.
DEFAULT_LAYERS = (200, 100)


def allowed_keys(task: str) -> tuple[str, ...]:
    """Return every key an entry of ``task`` may set, besides ``task`` itself."""
    return (*REQUIRED_KEYS[task], *OPTIONAL_KEYS[task], *COMMON_KEYS)


def required_keys(task: str) -> tuple[str, ...]:
    """Return the keys an entry of ``task`` must set, in the order the file usually gives them."""
    return (*REQUIRED_KEYS[task], "batch_size")


def describe_task_keys(task: str) -> str:
    """Return 'task, arch, image_size and batch_size' or its equivalent for ``task``."""
    keys = required_keys(task)
    if task != LEARNER_TASK:
        keys = ("task", *keys)
    return ", ".join(keys[:-1]) + f" and {keys[-1]}"
