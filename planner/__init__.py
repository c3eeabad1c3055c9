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
- *simulated*: a backend that runs the same fit on fake tensors, computing
  nothing, and replays its allocations through a model of the CUDA caching
  allocator for every card at once.
- *overhead*: memory on a card outside PyTorch's allocator (the CUDA
  context), subtracted from the card's memory before a trial runs.
- *headroom*: memory a search answer or the "max fitting batch size" must
  leave free on a card.
- *search*: probing a row's sizes to find the largest batch size (or image
  size) that fits a card.
"""

from planner.cards import Card, parse_memory
from planner.grid import Grid, GridError, TrialSpec, load_grid, parse_grid
from planner.quickfit import quickfit

__all__ = [
    "Card",
    "Grid",
    "GridError",
    "TrialSpec",
    "load_grid",
    "parse_grid",
    "parse_memory",
    "quickfit",
]
