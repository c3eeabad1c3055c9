"""User learner factories: ``learner: package.module:function`` in a model entry.

A factory is the user's own code. It receives one grid point's values as
keyword arguments: ``batch_size``, ``image_size`` and ``seq_len`` where the
entry sets them, and every key of ``params``. It returns a fastai
``Learner`` with the user's model and DataLoaders. The driver imports it once
while it checks the grid, so that a typo stops the run before any work. Each
worker imports it again before its first trial.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

_FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class FactoryError(ValueError):
    """A learner factory that cannot be imported, or not called with the grid's keyword arguments."""


@contextlib.contextmanager
def _searching(paths: tuple[str, ...]) -> Iterator[None]:
    """Put ``paths`` first on ``sys.path`` inside the block."""
    added = [path for path in paths if path not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for path in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(path)


def load_factory(name: str, search_paths: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Import ``module:function`` and return the function.

    ``search_paths`` are folders tried before ``sys.path``: the grid file's
    folder and the directory the run started in, so that a factory next to
    the grid imports without installing it.
    """
    if not _FACTORY_PATTERN.match(name):
        raise FactoryError(
            f"{name!r} is not a factory name: write module:function, for example my_project.learners:make_learner"
        )
    module_name, function_name = name.split(":")
    try:
        with _searching(search_paths):
            module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way while it imports
        raise FactoryError(
            f"module {module_name!r} cannot be imported ({type(error).__name__}: {error}). "
            f"Install it, add its folder to PYTHONPATH, or put it next to the grid file"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise FactoryError(f"module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise FactoryError(f"{name!r} is not callable (its type is {type(function).__name__}): it must be a function that returns a Learner")
    return function


def check_arguments(function: Callable[..., Any], arguments: list[str]) -> None:
    """Check that ``function`` accepts every name in ``arguments`` as a keyword and needs no other."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin or C function: its call will tell
    accepts_any = any(item.kind is inspect.Parameter.VAR_KEYWORD for item in signature.parameters.values())
    named = {
        item.name
        for item in signature.parameters.values()
        if item.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = [name for name in arguments if name not in named and not accepts_any]
    if unknown:
        raise FactoryError(
            f"it does not accept the keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"a factory receives batch_size, image_size and seq_len where the entry sets them, and every key "
            f"in params; add them to its parameters or take **kwargs"
        )
    needed = [
        item.name
        for item in signature.parameters.values()
        if item.default is inspect.Parameter.empty
        and item.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and item.name not in arguments
    ]
    if needed:
        raise FactoryError(
            f"it needs {', '.join(needed)}, which the entry does not give: add "
            f"{'them' if len(needed) > 1 else 'it'} to params, or give the parameter a default"
        )
