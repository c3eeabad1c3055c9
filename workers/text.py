"""Text trials: fastai's AWD_LSTM classifier and language model on synthetic token ids.

The documents are token ids drawn at random, numericalized already, so no
tokenizer runs. Every document is ``seq_len`` tokens long, so each classifier
batch is as large as a batch of a dataset's longest documents. That batch is
where a text fit's memory peaks, because fastai's classifier skips padding
rows chunk by chunk and shorter documents cost less.
"""

from __future__ import annotations

import numpy as np
import torch
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner
from fastai.text.core import defaults as text_defaults
from fastai.text.data import LMDataLoader, Pad_Chunk, SortedDL
from fastai.text.learner import language_model_learner, text_classifier_learner
from fastai.text.models import AWD_LSTM
from fastai.text.models.core import SentenceEncoder
from fastai.text.data import TensorText
from fasttransform import Transform

from planner.grid import TrialSpec

ARCHITECTURES = {"AWD_LSTM": AWD_LSTM}

# fastai's text classifier reads a document in chunks of this many tokens
# (text_classifier_learner's and TextBlock's default seq_len).
CLASSIFIER_CHUNK_TOKENS = 72


class SyntheticTokens(Transform):
    """Turn an item index into a document of random token ids, with ``vocab`` for fastai's learners to read."""

    def __init__(self, vocab: list[str], length: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.length = length

    def encodes(self, index: int) -> TensorText:
        special = len(text_defaults.text_spec_tok)
        ids = np.random.default_rng(index).integers(special, len(self.vocab), self.length)
        return TensorText(torch.from_numpy(ids))


def synthetic_vocab(size: int) -> list[str]:
    """fastai's special tokens, then made-up words, ``size`` tokens in all."""
    special = list(text_defaults.text_spec_tok)
    return special + [f"w{index}" for index in range(size - len(special))]


def build_text_dataloaders(spec: TrialSpec, *, train_items: int, valid_items: int, device: torch.device):
    """Build SortedDL (classifier) or LMDataLoader (language model) loaders of synthetic documents."""
    vocab = synthetic_vocab(spec.vocab_size)
    splitter = IndexSplitter(list(range(train_items, train_items + valid_items)))
    if spec.task == "language_model":
        # The loader cuts one stream of tokens into batch_size rows; one extra
        # document leaves room for the targets, shifted by one token.
        train_items += 1
        splitter = IndexSplitter(list(range(train_items, train_items + valid_items)))
        tokens = TransformBlock(type_tfms=SyntheticTokens(vocab, spec.seq_len), dl_type=LMDataLoader,
                                dls_kwargs={"seq_len": spec.seq_len})
        block = DataBlock(blocks=tokens, get_items=lambda _: list(range(train_items + valid_items)), splitter=splitter)
    else:
        labels = [str(label) for label in range(spec.classes)]
        tokens = TransformBlock(type_tfms=SyntheticTokens(vocab, spec.seq_len), dl_type=SortedDL,
                                dls_kwargs={"before_batch": Pad_Chunk(seq_len=CLASSIFIER_CHUNK_TOKENS)})
        block = DataBlock(
            blocks=(tokens, CategoryBlock(vocab=labels)),
            get_items=lambda _: list(range(train_items + valid_items)),
            get_y=lambda index: labels[index % len(labels)],
            splitter=splitter,
        )
    return block.dataloaders(None, bs=spec.batch_size, device=device, num_workers=0)


def create_text_learner(spec: TrialSpec, dls) -> Learner:
    """Build the AWD_LSTM classifier or language model with random weights."""
    arch = ARCHITECTURES[spec.arch]
    if spec.task == "language_model":
        return language_model_learner(dls, arch, pretrained=False)
    return text_classifier_learner(dls, arch, pretrained=False, seq_len=CLASSIFIER_CHUNK_TOKENS)


def full_batches_forward(encoder: SentenceEncoder, input: torch.Tensor):
    """``SentenceEncoder.forward`` for batches without padding, which fake tensors can run.

    fastai counts the rows that are not padding at each chunk (a value read
    from the data) and feeds only those. Synthetic documents are all
    ``seq_len`` tokens long, so every row counts, and the chunks are the same
    shapes fastai would feed. Follows fastai 2.8's ``SentenceEncoder.forward``.
    """
    batch_size, length = input.shape[:2]
    encoder.reset()
    mask = input == encoder.pad_idx
    outs, masks = [], []
    for start in range(0, length, encoder.bptt):
        out = encoder.module(input[:, start : min(start + encoder.bptt, length)])
        if encoder.max_len is None or length - start <= encoder.max_len:
            outs.append(out)
            masks.append(mask[:, start : min(start + encoder.bptt, length)])
    return torch.cat(outs, dim=1), torch.cat(masks, dim=1)
