"""Plan which batch size, image size and architecture fit into each GPU's memory.

The planner runs each point of a grid as a *trial*: a real fastai fit stopped
after a few train batches (with optimizer steps) and a few validation batches,
which is enough to set up all the memory a full fit needs.

Vocabulary, used the same way in names, messages, columns and docs:

- *grid*: the YAML file that lists cards, trial settings and model entries.
  Lists in a model entry expand as a Cartesian product into grid points.
- *trial*: one grid point run on one card for a few batches.
- *card*: a kind of GPU with a memory size in bytes (``card_memory_bytes``).
- *backend*: how a trial gets its memory figures.
  *measured* runs on a real CUDA GPU and reads PyTorch's allocator statistics;
  *emulated* computes for real on the CPU while a tracker counts live tensor
  storage and raises ``torch.OutOfMemoryError`` at the card's limit.
- *peak allocated*: the highest sum of live tensor blocks during a trial, in
  bytes, as ``torch.cuda.max_memory_allocated`` reports it.
- *peak reserved*: the highest sum of segments the caching allocator held from
  the driver, as ``torch.cuda.max_memory_reserved`` reports it.
- *stage*: where in a trial memory was allocated or ran out: ``setup``,
  ``train forward``, ``backward``, ``optimizer step`` or ``validation``.
- *overhead*: memory on a card that a trial cannot see (CUDA context, library
  workspaces), subtracted from the card's memory before a trial runs.
"""

from planner.cards import Card, parse_memory
from planner.grid import Grid, GridError, TrialSpec, load_grid, parse_grid

__all__ = [
    "Card",
    "Grid",
    "GridError",
    "TrialSpec",
    "load_grid",
    "parse_grid",
    "parse_memory",
]
