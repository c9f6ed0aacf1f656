"""Validation at the public boundary: images, sizes, the model and its output.

Everything here runs eagerly, before any ``vmap``, and raises `OcclensError` naming the call, the
argument and the shapes.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ._errors import OcclensError, describe, fail
from ._memory import ForwardWork, measure_forward

__all__ = [
    "check_eval_policy",
    "check_model_fn",
    "clean_forward",
    "image_batch",
    "int_pair",
    "positive_pair",
]

log = logging.getLogger("occlens")

# Layers whose forward depends on the training flag in a way that changes the answer or the model:
# batch statistics, random masks, running-stat updates.
_TRAIN_SENSITIVE: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.modules.instancenorm._InstanceNorm,
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def image_batch(x: object, call: str, argument: str = "x") -> tuple[Tensor, bool]:
    """Check an image ``[C, H, W]`` or batch ``[B, C, H, W]``; return ``(batch, was_single)``."""
    if not isinstance(x, Tensor):
        raise fail(
            call,
            argument,
            f"expected an image tensor, got {describe(x)}",
            _tensor_hint(x),
        )
    if x.ndim not in (3, 4):
        raise fail(
            call,
            argument,
            f"expected an image [C, H, W] or a batch [B, C, H, W], got {describe(x)}",
            "add or remove the batch dimension (x[None] / x[0])"
            if x.ndim in (2, 5)
            else "reshape the input to [C, H, W] or [B, C, H, W]",
        )
    if x.numel() == 0:
        raise fail(
            call,
            argument,
            f"the input is empty: {describe(x)}",
            "pass at least one image with C, H, W >= 1",
        )
    if not x.dtype.is_floating_point:
        raise fail(
            call,
            argument,
            f"expected a floating-point image, got {describe(x)}",
            "convert it, e.g. x.float() / 255 for uint8 pixels, then normalise as the model wants",
        )
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        raise fail(
            call,
            argument,
            f"{describe(x)} on the CPU: half-precision kernels there are slow and inexact",
            "use float32 or float64 on the CPU (half precision works on CUDA)",
        )
    if not _all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise fail(
            call,
            argument,
            f"{describe(x)} holds {bad} NaN/Inf value(s)",
            "replace them (torch.nan_to_num) or fix the preprocessing",
        )
    single = x.ndim == 3
    return (x.unsqueeze(0) if single else x), single


def _tensor_hint(x: object) -> str:
    """How to turn what the user passed into an image tensor."""
    module = type(x).__module__
    if module.startswith("PIL"):
        return "convert it with occlens.image.from_pil(img), which gives Tensor[3, H, W] in [0, 1]"
    if module == "numpy":
        return (
            "convert it with torch.from_numpy; an H x W x 3 uint8 picture becomes "
            "torch.from_numpy(a).permute(2, 0, 1).float() / 255"
        )
    return "pass a torch.Tensor [C, H, W] or [B, C, H, W]"


def _all_finite(x: Tensor) -> bool:
    """Whether `x` holds no NaN/Inf. Under ``vmap`` values cannot be read: the check is left to
    the call outside it."""
    try:
        # A finite sum proves every value finite; an overflowing sum of finite values falls
        # through to the exact check. The sum is 20x faster than isfinite(x).all() on the CPU.
        return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())
    except RuntimeError:  # a vmapped tensor refuses .item()
        return True


def int_pair(value: object) -> tuple[int, int]:
    """A layer's ``int`` or 1- or 2-element size argument (stride, padding, ...) as ``(h, w)``.
    Torch has accepted it already, so nothing is checked here (see `positive_pair`)."""
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return int(value[0]), int(value[0])
        return int(value[0]), int(value[1])
    return int(value), int(value)  # type: ignore[arg-type]


def positive_pair(value: object, call: str, argument: str) -> tuple[int, int]:
    """An ``int`` or ``(h, w)`` of positive ints, as ``(h, w)``."""
    pair: Sequence[object]
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = value
    else:
        raise fail(
            call,
            argument,
            f"got {describe(value)}",
            "pass an int or a (height, width) pair of ints",
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise fail(call, argument, f"got {describe(value)}", "pass whole numbers of pixels")
    if not all(v >= 1 for v in pair):  # type: ignore[operator]
        raise fail(
            call,
            argument,
            f"got {describe(value)}; sizes must be at least 1",
            "pass positive sizes",
        )
    return int(pair[0]), int(pair[1])  # type: ignore[call-overload]


def optional_positive_int(value: object, call: str, argument: str) -> None:
    """Accept None or an int >= 1 (chunk sizes, budgets)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise fail(
            call, argument, f"got {describe(value)}", "pass a positive int, or None for automatic"
        )


def check_model_fn(model_fn: object, call: str) -> None:
    if not callable(model_fn):
        raise fail(
            call,
            "model_fn",
            f"expected a callable model, got {describe(model_fn)}",
            "pass an nn.Module or a function Tensor[B, ...] -> Tensor[B, ...]",
        )


def check_eval_policy(model_fn: object, call: str) -> None:
    """Refuse a model whose train-mode layers would change the answer (or the model).

    occlens never flips train/eval mode itself: that would mutate the user's model.
    """
    if not isinstance(model_fn, nn.Module):
        return
    for name, module in model_fn.named_modules():
        if module.training and isinstance(module, _TRAIN_SENSITIVE):
            if (
                isinstance(module, nn.modules.instancenorm._InstanceNorm)
                and not module.track_running_stats
            ):
                continue
            raise fail(
                call,
                "model_fn",
                f"{type(module).__name__} at {name or 'the root'!r} is in training mode, where its "
                "output depends on the batch or on random masks (and may update buffers)",
                "call model.eval() before explaining it; occlens never changes the mode for you",
            )


def _check_dtype_device(model_fn: object, x: Tensor, call: str, argument: str) -> None:
    if not isinstance(model_fn, nn.Module):
        return
    for tensor in itertools.chain(model_fn.parameters(), model_fn.buffers()):
        if tensor.device != x.device:
            raise fail(
                call,
                argument,
                f"the input is on {x.device} but the model's tensors are on {tensor.device}",
                f"move the input with x.to({str(tensor.device)!r})",
            )
        if tensor.dtype.is_floating_point and tensor.dtype != x.dtype:
            raise fail(
                call,
                argument,
                f"the input is {describe(x)} but the model's parameters are "
                f"{str(tensor.dtype).removeprefix('torch.')}",
                "convert the input (x.to(dtype)) or use a copy of the model in that dtype",
            )
        break


def check_model(model_fn: object, batch: Tensor, call: str, argument: str = "x") -> None:
    """Everything about the model that can be checked before running it on `batch`, the input
    named `argument` in the call."""
    check_model_fn(model_fn, call)
    check_eval_policy(model_fn, call)
    _check_dtype_device(model_fn, batch, call, argument)


@contextmanager
def model_errors(call: str, batch: Tensor) -> Iterator[None]:
    """Turn an error raised inside the user's model into an `OcclensError` naming the call."""
    try:
        yield
    except OcclensError:
        raise
    except (RuntimeError, TypeError, IndexError, ValueError) as error:  # torch's shape errors
        raise fail(
            call,
            "model_fn",
            f"the model raised {type(error).__name__} on the input {describe(batch)}: "
            f"{str(error).splitlines()[0] if str(error) else ''}",
            "check that the input shape and channels are what the model expects",
        ) from error


def clean_forward(
    model_fn,
    batch: Tensor,
    call: str,
    *,
    measure: bool = False,
    argument: str = "x",
    layers: bool = False,
) -> tuple[Tensor, ForwardWork]:
    """Run the model once on the clean batch (no autograd) and check what comes back.

    Returns the output and, with `measure`, the work of the forward pass: the bytes it allocated,
    its operators and FLOPs (else, or where the counting mode fails, an unmeasured `ForwardWork`
    of zeros), with the log of its image layers where `layers` is set. `argument` names the
    input in errors about its dtype or device.
    """
    check_model(model_fn, batch, call, argument)
    work = ForwardWork()
    with model_errors(call, batch):
        if measure:
            try:
                output, work = measure_forward(model_fn, batch, layers=layers)
            except OcclensError:
                raise
            except Exception as error:  # the counting mode itself may not follow every model
                log.debug("occlens: could not measure the forward pass (%s)", error)
                measure = False
        if not measure:
            with torch.no_grad():
                output = model_fn(batch)
    return check_output(output, batch, call), work


def check_output(output: object, batch: Tensor, call: str) -> Tensor:
    if isinstance(output, (tuple, list, dict)):
        raise fail(
            call,
            "model_fn",
            f"the model returned a {type(output).__name__}, not a tensor",
            "wrap the model so it returns one tensor, e.g. lambda x: model(x)['logits']",
        )
    if not isinstance(output, Tensor):
        raise fail(
            call,
            "model_fn",
            f"the model returned {describe(output)}",
            "return a tensor Tensor[B, ...]",
        )
    if output.ndim == 0 or output.shape[0] != batch.shape[0]:
        raise fail(
            call,
            "model_fn",
            f"the model maps a batch {describe(batch)} to {describe(output)}, which has no batch "
            "dimension",
            "make the model keep the batch dimension (do not squeeze it away)",
        )
    if not output.dtype.is_floating_point:
        raise fail(
            call,
            "model_fn",
            f"the model returned {describe(output)}",
            "return floating-point scores",
        )
    return output
