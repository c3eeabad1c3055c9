"""Build a trial's Learner with the user's learner factory."""

from __future__ import annotations

import torch
from fastai.learner import Learner

from planner.factories import load_factory
from planner.grid import TrialSpec
from workers.largest_batches import check_fastai_loaders


def build_factory_learner(spec: TrialSpec, device: torch.device) -> Learner:
    """Call the spec's factory with its grid values and put its DataLoaders on ``device``."""
    factory = load_factory(spec.arch, spec.learner_paths)
    learn = factory(**spec.factory_arguments)
    if not isinstance(learn, Learner):
        raise TypeError(
            f"the learner factory {spec.arch} returned a {type(learn).__name__}, not a fastai Learner"
        )
    check_fastai_loaders(learn.dls)
    learn.dls.device = device
    if spec.valid_batch_size is not None:
        learn.dls.valid.bs = spec.valid_batch_size  # fastai's val_bs
    learn.logger = lambda *_: None  # keep the actor's output to one line per trial
    return learn
