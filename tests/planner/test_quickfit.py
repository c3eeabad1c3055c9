import logging
import math
import subprocess
import sys
import warnings
from pathlib import Path

import fastai.callback.core
import pytest
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner

from planner.grid import TrialSpec
from planner.quickfit import (
    ENVIRONMENT_VARIABLE,
    PATCHED_METHODS,
    QuickFitSettings,
    parse_environment_value,
    quickfit,
)
from workers.learners import build_dataloaders, build_learner

warnings.filterwarnings("ignore", category=UserWarning)

SPEC = TrialSpec("classification", "resnet18", 32, 4)
# Three train and two validation batches of 4 images, so the defaults of
# 2 train and 1 validation batch are fewer than a full epoch in both phases.
TRAIN_ITEMS = 12
VALID_ITEMS = 8


class CountBatches(Callback):
    """Record the train and validation batches and the epochs of each fit, independently of quickfit."""

    order = 90

    def __init__(self):
        self.calls = []
        self.quickfit_callbacks = []

    def before_fit(self):
        self.calls.append({"train": 0, "valid": 0, "epochs": 0})
        self.quickfit_callbacks.append(sum(type(cb).__name__ == "QuickFitCallback" for cb in self.learn.cbs))

    def before_epoch(self):
        self.calls[-1]["epochs"] += 1

    def after_batch(self):
        self.calls[-1]["train" if self.learn.training else "valid"] += 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These batches are too small to gain from more intra-op threads, and
    # spinning OpenMP threads slow them down many times over when other
    # processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def switch_off():
    quickfit(False)
    yield
    quickfit(False)


@pytest.fixture(scope="module")
def dls():
    return build_dataloaders(SPEC, train_items=TRAIN_ITEMS, valid_items=VALID_ITEMS, device=torch.device("cpu"))


def counted_learner(dls):
    learn = build_learner(SPEC, dls)
    counter = CountBatches()
    learn.add_cb(counter)
    return learn, counter


def learner_methods():
    return {name: Learner.__dict__[name] for name in PATCHED_METHODS}


def test_fine_tune_stops_both_fits(dls):
    learn, counter = counted_learner(dls)  # created before the switch is on
    quickfit(True)
    learn.fine_tune(2)
    assert counter.calls == [
        {"train": 2, "valid": 1, "epochs": 1},
        {"train": 2, "valid": 1, "epochs": 1},
    ]


def test_fit_one_cycle_runs_one_short_epoch(dls):
    quickfit(True)
    learn, counter = counted_learner(dls)
    learn.fit_one_cycle(3)
    assert counter.calls == [{"train": 2, "valid": 1, "epochs": 1}]
    # The epoch ended normally, so Recorder logged train and validation loss.
    assert len(learn.recorder.values) == 1
    assert len(learn.recorder.values[0]) == 2


def test_fit_with_start_epoch_trains_that_epoch(dls):
    quickfit(True)
    learn, counter = counted_learner(dls)
    learn.fit(4, start_epoch=1)
    # SkipToEpoch (order 70) cancels epoch 0 before the counter's before_epoch runs, and epoch 1 trains.
    assert counter.calls == [{"train": 2, "valid": 1, "epochs": 1}]
    assert learn.epoch == 1


def test_lr_find_stops_after_train_batches(dls):
    learn, counter = counted_learner(dls)
    quickfit(True, train_batches=3)
    suggestions = learn.lr_find()
    assert counter.calls == [{"train": 3, "valid": 0, "epochs": 1}]
    assert suggestions._fields == ("valley",)
    assert math.isnan(suggestions.valley)


def test_validate_runs_valid_batches(dls):
    learn, counter = counted_learner(dls)
    quickfit(True)
    record = learn.validate()
    assert counter.calls == [{"train": 0, "valid": 1, "epochs": 1}]
    assert len(record) == 1  # valid_loss, as without the switch


def test_get_preds_runs_valid_batches(dls):
    learn, counter = counted_learner(dls)
    quickfit(True, valid_batches=1)
    preds, targets = learn.get_preds()
    assert counter.calls == [{"train": 0, "valid": 1, "epochs": 1}]
    assert preds.shape == (SPEC.batch_size, SPEC.classes)
    assert targets.shape == (SPEC.batch_size,)


def test_get_preds_on_train_set_positional(dls):
    learn, counter = counted_learner(dls)
    quickfit(True, valid_batches=2)
    preds, _ = learn.get_preds(0)
    assert counter.calls == [{"train": 0, "valid": 2, "epochs": 1}]
    assert preds.shape == (2 * SPEC.batch_size, SPEC.classes)


def test_off_restores_fastai_exactly(dls):
    defaults_list = fastai.callback.core.defaults.callbacks
    defaults_items = list(defaults_list)
    methods = learner_methods()

    quickfit(True)
    assert fastai.callback.core.defaults.callbacks is defaults_list
    assert list(defaults_list) == defaults_items
    for name, original in methods.items():
        assert Learner.__dict__[name] is not original, name

    quickfit(False)
    assert fastai.callback.core.defaults.callbacks is defaults_list
    assert all(now is before for now, before in zip(defaults_list, defaults_items, strict=True))
    assert learner_methods() == methods
    for name, original in methods.items():
        assert Learner.__dict__[name] is original, name
    assert quickfit.settings is None


def test_off_runs_all_batches(dls):
    learn, counter = counted_learner(dls)
    quickfit(True)
    quickfit(False)
    learn.fit(1)
    assert counter.calls == [{"train": 3, "valid": 2, "epochs": 1}]
    assert not any(type(cb).__name__ == "QuickFitCallback" for cb in learn.cbs)


def test_on_twice_patches_once(dls):
    quickfit(True)
    patched = learner_methods()
    settings = quickfit(True, train_batches=1)
    assert learner_methods() == patched
    assert settings == QuickFitSettings(train_batches=1, valid_batches=1)

    learn, counter = counted_learner(dls)
    learn.fit(1)
    assert counter.quickfit_callbacks == [1]
    assert counter.calls == [{"train": 1, "valid": 1, "epochs": 1}]
    assert not hasattr(learn, "quick_fit")  # added_cbs removed the callback after the call

    quickfit(False)
    restored = learner_methods()
    quickfit(False)
    assert learner_methods() == restored


def test_environment_variable_sets_switch(dls, monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "train=1,valid=2")
    settings = quickfit.from_environment()
    assert settings == QuickFitSettings(train_batches=1, valid_batches=2)

    learn, counter = counted_learner(dls)
    learn.fit(1)
    assert counter.calls == [{"train": 1, "valid": 2, "epochs": 1}]

    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "0")
    assert quickfit.from_environment() is None
    assert quickfit.settings is None

    quickfit(True)
    monkeypatch.delenv(ENVIRONMENT_VARIABLE)
    assert quickfit.from_environment() is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("0", None),
        (" Off ", None),
        ("1", {}),
        ("true", {}),
        ("train=3", {"train_batches": 3}),
        ("train=3, valid=2", {"train_batches": 3, "valid_batches": 2}),
    ],
)
def test_environment_value_parsed(value, expected):
    assert parse_environment_value(value) == expected


@pytest.mark.parametrize("value", ["2x", "train=0", "train=-1", "valid=", "train=2,train=3", "batches=2"])
def test_environment_value_invalid(value):
    with pytest.raises(ValueError, match=ENVIRONMENT_VARIABLE):
        parse_environment_value(value)


def test_environment_not_read_on_import():
    # A fresh interpreter: the module must neither read the variable nor import fastai.
    code = (
        "import sys, planner\n"
        "assert planner.quickfit.settings is None, planner.quickfit.settings\n"
        "assert 'fastai' not in sys.modules\n"
    )
    env = {"PATH": "/usr/bin:/bin", ENVIRONMENT_VARIABLE: "1"}
    repository = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repository, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_report_line_per_call(dls, caplog):
    learn, _ = counted_learner(dls)
    lines = []
    quickfit(True, report=lines.append)
    with caplog.at_level(logging.INFO, logger="planner.quickfit"):
        learn.fine_tune(1)
        learn.validate()

    assert len(lines) == 3
    assert lines[0].startswith("quickfit: fit ran 2 train batches and 1 validation batch; ")
    assert lines[2].startswith("quickfit: validate ran 0 train batches and 1 validation batch; ")
    assert all("peak memory not measured on cpu: only CUDA devices report it" in line for line in lines)
    logged = [record.getMessage() for record in caplog.records if record.name == "planner.quickfit"]
    assert logged == lines


class RaiseOutOfMemory(Callback):
    def after_loss(self):
        if self.learn.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_propagates(dls):
    learn, _ = counted_learner(dls)
    lines = []
    quickfit(True, report=lines.append)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        learn.fit(1, cbs=RaiseOutOfMemory())
    assert lines == [
        "quickfit: fit raised OutOfMemoryError after 0 train batches and 0 validation batches; "
        "peak memory not measured on cpu: only CUDA devices report it"
    ]
    assert not any(type(cb).__name__ == "QuickFitCallback" for cb in learn.cbs)


def test_invalid_arguments_leave_switch_off():
    with pytest.raises(ValueError, match="train_batches must be at least 1, got 0"):
        quickfit(True, train_batches=0)
    with pytest.raises(TypeError, match="valid_batches must be an int"):
        quickfit(True, valid_batches=1.5)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        quickfit("yes")
    assert quickfit.settings is None
    assert Learner.fit.__module__ == "fastai.learner"


@pytest.mark.gpu
def test_peak_memory_reported_on_cuda():
    cuda_dls = build_dataloaders(SPEC, train_items=TRAIN_ITEMS, valid_items=VALID_ITEMS, device=torch.device("cuda"))
    learn = build_learner(SPEC, cuda_dls)
    lines = []
    quickfit(True, report=lines.append)
    learn.fit(1)
    assert len(lines) == 1
    assert "peak allocated " in lines[0]
    assert " on cuda" in lines[0]
