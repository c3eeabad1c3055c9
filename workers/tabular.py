"""Tabular trials: fastai's ``tabular_learner`` on a synthetic table.

The table has ``n_cont`` normally distributed continuous columns, ``n_cat``
categorical columns with ``cardinality`` categories each, and a class label.
fastai's Categorify adds a category for missing values, so each embedding has
``cardinality + 1`` rows, as it would on a real column.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from fastai.data.block import CategoryBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.tabular.core import Categorify, Normalize, TabularPandas
from fastai.tabular.learner import tabular_learner

from planner.grid import TrialSpec


def synthetic_table(spec: TrialSpec, rows: int) -> pd.DataFrame:
    """Return ``rows`` rows of random continuous and categorical columns and a label column ``y``.

    Categorical columns have pandas' categorical dtype, whose categories
    fastai's Categorify takes as the vocabulary, so an embedding has all
    ``cardinality`` categories even when the few rows of a trial hold fewer.
    """
    rng = np.random.default_rng(0)
    columns: dict[str, object] = {}
    for index in range(spec.n_cont):
        columns[f"cont{index}"] = rng.standard_normal(rows).astype(np.float32)
    for index in range(spec.n_cat):
        codes = rng.integers(0, spec.cardinality, rows)
        columns[f"cat{index}"] = pd.Categorical(codes, categories=range(spec.cardinality))
    columns["y"] = np.arange(rows) % spec.classes
    return pd.DataFrame(columns)


def build_tabular_dataloaders(spec: TrialSpec, *, train_items: int, valid_items: int, device: torch.device):
    """Build TabularPandas loaders over the synthetic table."""
    frame = synthetic_table(spec, train_items + valid_items)
    table = TabularPandas(
        frame,
        procs=[Categorify, Normalize],
        cat_names=[f"cat{index}" for index in range(spec.n_cat)],
        cont_names=[f"cont{index}" for index in range(spec.n_cont)],
        y_names="y",
        y_block=CategoryBlock(vocab=list(range(spec.classes))),
        splits=IndexSplitter(list(range(train_items, train_items + valid_items)))(range(len(frame))),
    )
    return table.dataloaders(bs=spec.batch_size, device=device, num_workers=0)


def create_tabular_learner(spec: TrialSpec, dls) -> Learner:
    """Build ``tabular_learner`` with the spec's hidden layers."""
    return tabular_learner(dls, layers=list(spec.layers))
