"""Choosing chunk sizes from a memory budget, and counting a forward pass's work.

The forward pass is measured once with a dispatch mode that adds up the bytes of every tensor an
operator creates (views and in-place results excluded). That sum bounds the activation memory of
one sample from above, whatever the architecture, so ``budget // per_sample`` samples fit. The
same pass counts operators and the FLOPs of the matrix products and convolutions: numbers that
depend on the model and the input shape only, so choices made from them (the occlusion engine)
never change from one run to the next the way timings do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from ._incremental_bound import Layer, LayerLog

__all__ = ["ForwardWork", "auto_chunk", "default_budget", "measure_forward"]

# On the CPU, big batches stop paying once a call's activations overflow the caches. Measured at
# 224 px on a 2-core EPYC with 32 MB L3: AlexNet (3 MB of activations per image) is fastest at
# 32 images (12 ms/img vs 26 at 1), ResNet18 (22 MB) is flat from 1 to 32, and VGG16 (73 MB) is
# 10-20 % faster at 1-8 images than at 16-32, fastest at 1. So a CPU chunk holds about 96 MB of
# activations, 1 to 32 images.
_CPU_MAX_CHUNK = 32
_CPU_ACTIVATION_BYTES = 96 << 20
_CUDA_MAX_CHUNK = 1024


@dataclass(frozen=True)
class ForwardWork:
    """What one forward pass did: bytes its operators allocated, operators run, and FLOPs of its
    matrix products and convolutions (two per multiply-add). All zero when not `measured`.
    `layers`, where asked for, logs the operators that read the image
    (`occlens._incremental_bound`)."""

    bytes: int = 0
    ops: int = 0
    flops: float = 0.0
    measured: bool = False
    layers: tuple[Layer, ...] = ()


class _Unusual(Exception):
    """An argument `_shapes` does not follow; the flop formula's own wrapper handles it."""


def _shapes(value: object) -> object:
    """`value` with every tensor replaced by its shape, as the flop formulas' wrapper does."""
    if isinstance(value, Tensor):
        return value.shape
    if type(value) is list or type(value) is tuple:
        return type(value)(_shapes(item) for item in value)
    if isinstance(value, (dict, tuple, list)):
        raise _Unusual
    return value


@dataclass(frozen=True)
class _Operator:
    """What the counter needs to know of an operator, worked out once per overload."""

    counted: bool  # not a view: an operator run
    allocates: bool  # ... that writes no input in place: its outputs are new memory
    flops: Callable[..., object] | None  # torch's flop formula, on the arguments
    flops_of_shapes: Callable[..., object] | None  # the same formula, on their shapes

    @classmethod
    def of(cls, func) -> _Operator:
        known = _OPERATORS.get(func)
        if known is None:
            writes = any(
                a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments
            )
            formula = flop_registry.get(func._overloadpacket)
            raw = getattr(formula, "__wrapped__", None)  # `shape_wrapper`'s inner function
            view = func.is_view
            known = _OPERATORS[func] = cls(not view, not view and not writes, formula, raw)
        return known


_OPERATORS: dict[object, _Operator] = {}


class _CountWork(TorchDispatchMode):
    def __init__(self, log: LayerLog | None = None) -> None:
        super().__init__()
        self.bytes, self.ops, self.flops = 0, 0, 0.0
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        operator = _Operator.of(func)
        if operator.allocates:
            if isinstance(out, Tensor):
                self.bytes += out.nbytes
            else:
                self.bytes += sum(t.nbytes for t in tree_leaves(out) if isinstance(t, Tensor))
        self.ops += operator.counted
        flops = 0.0 if operator.flops is None else _flops(operator, args, kwargs, out)
        self.flops += flops
        if self.log is not None:
            self.log.record(func, args, kwargs, out, flops)
        return out


def _flops(operator: _Operator, args: tuple, kwargs: dict, out: object) -> float:
    """The operator's FLOPs by torch's formula, on shapes taken here (torch's wrapper maps a
    pytree over the arguments: most of the counter's time on small models)."""
    if operator.flops_of_shapes is not None:
        try:
            shapes = [_shapes(a) for a in args]
            named = {k: _shapes(v) for k, v in kwargs.items()}
            out_shape = _shapes(out)
        except _Unusual:
            pass
        else:
            return float(operator.flops_of_shapes(*shapes, out_shape=out_shape, **named))
    return float(operator.flops(*args, **kwargs, out_val=out))  # type: ignore[misc]


def measure_forward(
    model_fn: Callable[[Tensor], Tensor], batch: Tensor, *, layers: bool = False
) -> tuple[Tensor, ForwardWork]:
    """Run ``model_fn(batch)`` without autograd; return the output and the work it did, with the
    log of its image layers where `layers` is set."""
    counter = _CountWork(LayerLog(batch) if layers else None)
    with torch.no_grad(), counter:
        output = model_fn(batch)
    log = () if counter.log is None else tuple(counter.log.layers)
    return output, ForwardWork(counter.bytes, counter.ops, counter.flops, True, log)


def default_budget(device: torch.device) -> int:
    """Bytes a chunk may use: half the free GPU memory, or min(1 GiB, a quarter of free RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 4 << 30
    return int(min(1 << 30, available // 4))


def auto_chunk(
    activation_bytes: int, row_bytes: int, budget: int, device: torch.device, rows: int
) -> int:
    """Samples per model call: within `budget`, capped for throughput, at least 1.

    `activation_bytes` is what one sample's forward pass allocates; `row_bytes` adds the buffers
    that hold the sample itself.
    """
    if device.type == "cuda":
        cap = _CUDA_MAX_CHUNK
    else:
        cap = min(_CPU_MAX_CHUNK, _CPU_ACTIVATION_BYTES // max(activation_bytes, 1))
    fit = budget // max(row_bytes, 1)
    return int(max(1, min(fit, cap, rows)))


def backward_copies(activations: int, batch: Tensor, budget: int | None) -> int:
    """Copies of `batch` per forward and backward pass (integration points, noisy samples).

    `activations` is what one forward pass of the whole batch allocates. The throughput cap
    counts one forward's activations per image, as occlusion does; the memory budget counts
    three (a backward pass keeps about twice the forward's tensors) plus the inputs.
    """
    images = batch.shape[0]
    image_bytes = batch[0].nbytes
    forward = activations // images or 64 * image_bytes
    per_image = auto_chunk(
        forward,
        3 * forward + 4 * image_bytes,
        budget or default_budget(batch.device),
        batch.device,
        10**9,
    )
    return max(1, per_image // images)
