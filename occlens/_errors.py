"""The one exception occlens raises for bad input, and the helpers that build its messages."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

__all__ = ["OcclensError", "describe", "fail", "reported_as"]


class OcclensError(ValueError):
    """Bad input to an occlens function.

    The message starts with the call and the argument at fault, gives the shapes involved and says
    what to do instead. It is a `ValueError`, so existing `except ValueError` code keeps working.

    >>> import occlens as ol
    >>> issubclass(ol.OcclensError, ValueError)
    True
    """


def describe(value: object) -> str:
    """A short description of a value for error messages: shape and dtype for tensors."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if type(value).__module__ == "numpy" and shape is not None and len(shape) > 1:
        return f"a numpy array{list(shape)} {dtype}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"{type(value).__name__} of length {len(value)}"
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"the function {value.__qualname__}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(call: str, argument: str, problem: str, fix: str) -> OcclensError:
    """Build an `OcclensError` as ``call(argument=...): problem; fix.``.

    Returned rather than raised, so that call sites read ``raise fail(...)`` and tracebacks end at
    the public boundary.
    """
    return OcclensError(f"{call}({argument}): {problem}; {fix}.")


def close_matches(name: str, options: Sequence[str], n: int = 5) -> str:
    """Human-readable list of the options closest to `name`, for 'did you mean' hints."""
    import difflib

    matches = difflib.get_close_matches(name, list(options), n=n, cutoff=0.5)
    if not matches:
        matches = [opt for opt in options if name.lower() in opt.lower()][:n]
    return ", ".join(repr(m) for m in matches) if matches else "none close"


@contextmanager
def reported_as(call: str, arguments: Mapping[str, str]) -> Iterator[None]:
    """Report an `OcclensError` of an inner call as one of `call`, with its argument renamed.

    A function built from other public functions uses this so that the user reads the names
    they wrote: ``empirical_rf(images): ...`` rather than ``top_k(x): ...``.
    """
    try:
        yield
    except OcclensError as error:
        text = str(error)
        head = re.match(r"^(\w+)\((\w+)", text)
        if head is None or (head[1] == call and head[2] not in arguments):
            raise
        argument = arguments.get(head[2], head[2])
        raise OcclensError(f"{call}({argument}{text[head.end() :]}") from error
