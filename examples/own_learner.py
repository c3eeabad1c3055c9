"""A learner factory: your own model and DataLoaders, planned by ``learner: own_learner:make_learner``.

The planner calls ``make_learner`` once per trial with the grid point's
values as keyword arguments (``batch_size``, and every key of the entry's
``params``) and fits the Learner it returns for a few batches.

This one is a review classifier: most reviews are short, and a
few are very long. The model is a small convolutional text classifier
(embedding, two 1-D convolutions, max pooling over time). With
``loader="sorted"`` the DataLoaders are fastai's ``SortedDL``, which records
every review's length, so the planner probes the batch of the longest
reviews wherever they are in the dataset. With ``loader="plain"`` they are
plain fastai DataLoaders in dataset order, and the planner keeps the largest
of the first ``trial.scan_batches`` batches.
"""

from __future__ import annotations

import numpy as np
import torch
from fastai.data.core import DataLoaders, Datasets
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.text.data import SortedDL, pad_input
from torch import nn

PAD = 1  # the padding token id, fastai's default for pad_input


class ConvTextClassifier(nn.Module):
    """Embed tokens, convolve over time twice, max-pool over time, classify."""

    def __init__(self, vocab_size: int, embedding: int, channels: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding, padding_idx=PAD)
        self.convs = nn.Sequential(
            nn.Conv1d(embedding, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=5, padding=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(channels, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features = self.convs(self.embed(tokens).transpose(1, 2))  # batch x channels x time
        return self.head(features.amax(dim=2))


def review_lengths(documents: int, short_tokens: int, max_tokens: int, long_share: float) -> np.ndarray:
    """Lengths in tokens: most reviews short (up to short_tokens), a long_share of them max_tokens long."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(max(1, short_tokens // 4), short_tokens + 1, documents)
    long_reviews = rng.choice(documents, size=round(documents * long_share), replace=False)
    lengths[long_reviews] = max_tokens
    return lengths


def make_learner(
    batch_size: int,
    max_tokens: int = 2000,
    short_tokens: int = 60,
    long_share: float = 0.02,
    documents: int = 1000,
    vocab_size: int = 20_000,
    embedding: int = 128,
    channels: int = 256,
    classes: int = 2,
    loader: str = "sorted",
) -> Learner:
    """Build the review classifier's Learner for one grid point."""
    lengths = review_lengths(documents, short_tokens, max_tokens, long_share)

    def tokens(index: int) -> torch.Tensor:
        rng = np.random.default_rng(index)
        return torch.from_numpy(rng.integers(2, vocab_size, int(lengths[index])))

    def label(index: int) -> torch.Tensor:
        return torch.tensor(index % classes)

    valid = list(range(documents - documents // 5, documents))
    datasets = Datasets(list(range(documents)), tfms=[[tokens], [label]], splits=IndexSplitter(valid)(range(documents)))
    # SortedDL sorts by the first element's length; give it the lengths so it does not build every review.
    train_lengths = [int(lengths[index]) for index in datasets.splits[0]]
    valid_lengths = [int(lengths[index]) for index in datasets.splits[1]]
    if loader == "sorted":
        loaders = DataLoaders(
            SortedDL(datasets.train, res=train_lengths, bs=batch_size, shuffle=True, drop_last=True, before_batch=pad_input),
            SortedDL(datasets.valid, res=valid_lengths, bs=batch_size, before_batch=pad_input),
        )
    elif loader == "plain":
        loaders = datasets.dataloaders(bs=batch_size, before_batch=pad_input, shuffle=False)
    else:
        raise ValueError(f"loader is {loader!r}: use 'sorted' or 'plain'")
    model = ConvTextClassifier(vocab_size, embedding, channels, classes)
    return Learner(loaders, model, loss_func=CrossEntropyLossFlat())
