"""The faster kernels of eager gradients (`occlens._fast_kernels`): the input gradient of
convolutions onto few channels (`occlens._stem_backward`) and channels-last max pools.

References: ``torch.autograd.grad`` through ``F.conv2d`` and ``F.max_pool2d`` with the default
kernels, and a plain autograd loop over the images for the methods that route through them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _state import ModelState, assert_untouched, tensor_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
import occlens._fast_kernels as fast_kernels_module
import occlens._stem_backward as stem_backward
from occlens import testing
from occlens._fast_kernels import MAX_CHANNELS, POOL_ELEMENTS, fast_kernels
from occlens._stem_backward import conv2d_input_gradient


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def autograd_input_gradient(x, weight, grad, stride, padding) -> torch.Tensor:
    leaf = x.detach().requires_grad_()
    (gradient,) = torch.autograd.grad(F.conv2d(leaf, weight, None, stride, padding), leaf, grad)
    return gradient


@st.composite
def conv_geometry(draw):
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    sy, sx = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    py, px = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    height = draw(st.integers(max(1, kh - 2 * py), 30))
    width = draw(st.integers(max(1, kw - 2 * px), 30))
    return {
        "channels": draw(st.integers(1, MAX_CHANNELS)),
        "features": draw(st.integers(1, 9)),
        "batch": draw(st.integers(1, 3)),
        "kernel": (kh, kw),
        "stride": (sy, sx),
        "padding": (py, px),
        "size": (height, width),
        "seed": draw(st.integers(0, 2**16)),
    }


def _spied(monkeypatch) -> list:
    calls: list = []
    original = stem_backward.conv2d_input_gradient

    def spy(*args, **kwargs):
        calls.append(args[2:])
        return original(*args, **kwargs)

    monkeypatch.setattr(stem_backward, "conv2d_input_gradient", spy)
    return calls


@given(conv_geometry())
def test_input_gradient_equals_autograd_for_any_geometry(geometry):
    """Strides that do and do not divide the kernel or the image, paddings up to the kernel,
    rows and columns that no window reads (they get exactly zero), non-square everything."""
    rng = torch.Generator().manual_seed(geometry["seed"])
    shape = (geometry["batch"], geometry["channels"], *geometry["size"])
    x = torch.rand(shape, generator=rng, dtype=torch.float64)
    weight = torch.randn(
        geometry["features"], geometry["channels"], *geometry["kernel"], generator=rng
    ).double()
    stride, padding = geometry["stride"], geometry["padding"]
    grad = torch.randn_like(F.conv2d(x, weight, None, stride, padding))
    ours = conv2d_input_gradient(grad, weight, geometry["size"], stride, padding)
    reference = autograd_input_gradient(x, weight, grad, stride, padding)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "vgg16"])
def test_reference_stems_route_through_the_rule_and_equal_autograd(name, monkeypatch):
    """AlexNet's (11x11, stride 4), ResNet18's (7x7, stride 2) and VGG16's (3x3, stride 1) first
    layers take the rule; saliency equals a plain autograd loop, image by image, in float64."""
    calls = _spied(monkeypatch)
    model = getattr(testing, name)().double()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.tensor([3, 7])
    ours = ol.saliency(model, x, target)
    assert len(calls) == 1, calls  # the stem only: every later conv reads 64 or more channels
    for i in range(2):
        leaf = x[i : i + 1].clone().requires_grad_()
        (reference,) = torch.autograd.grad(model(leaf)[0, target[i]], leaf)
        assert rel(ours[i], reference[0]) < 1e-12
    guided = ol.saliency(ol.guided(model), x, target)
    assert len(calls) == 2
    calls.clear()
    monkeypatch.setattr(fast_kernels_module, "MAX_CHANNELS", 0)  # the rule switched off
    plain_guided = ol.saliency(ol.guided(model), x, target)
    assert not calls
    assert rel(guided, plain_guided) < 1e-12


@pytest.mark.parametrize(
    ("layer", "routed"),
    [
        (nn.Conv2d(3, 8, 5, stride=2, padding=2), True),
        (nn.Conv2d(1, 8, 3), True),
        (nn.Conv2d(3, 8, 3, padding="same"), False),  # a padding string
        (nn.Conv2d(3, 8, 3, dilation=2), False),
        (nn.Conv2d(3, 6, 3, groups=3), False),
        (nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), True),  # F.pad, then padding 0
        (nn.Conv2d(MAX_CHANNELS + 1, 8, 3), False),
    ],
    ids=["stride-2", "grey", "same", "dilated", "grouped", "reflect", "many-channels"],
)
def test_which_convolutions_take_the_rule(layer, routed, monkeypatch):
    calls = _spied(monkeypatch)
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).double()
    channels = layer.in_channels
    x = torch.rand(2, channels, 12, 12, generator=torch.Generator().manual_seed(2)).double()
    model(x)  # materialise the lazy layer
    ours = ol.saliency(model, x, torch.tensor([0, 3]))
    assert bool(calls) == routed
    leaf = x.clone().requires_grad_()
    (reference,) = torch.autograd.grad(
        model(leaf)[torch.arange(2), torch.tensor([0, 3])].sum(), leaf
    )
    assert rel(ours, reference) < 1e-12


def test_functional_spellings_and_preprocessing(monkeypatch):
    """``F.conv2d`` called by the model itself, with keywords, after ``(x - mean) / std``."""
    calls = _spied(monkeypatch)
    weight = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(3)).double()
    mean = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64).view(1, 3, 1, 1)

    def model(x):
        h = F.conv2d((x - mean) / 0.25, weight=weight, stride=(2, 3), padding=1)
        return F.relu(h).flatten(1)[:, :5]

    x = torch.rand(3, 3, 15, 16, generator=torch.Generator().manual_seed(4)).double()
    ours = ol.saliency(model, x, 2)
    assert len(calls) == 1
    leaf = x.clone().requires_grad_()
    (reference,) = torch.autograd.grad(model(leaf)[:, 2].sum(), leaf)
    assert rel(ours, reference) < 1e-12


def test_transformed_and_differentiated_calls_keep_the_default_rule(monkeypatch):
    """Under vmap, or where the caller differentiates the map, no custom rule is used."""
    calls = _spied(monkeypatch)
    model = testing.tiny_cnn().double()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).double()
    batched = torch.func.vmap(lambda image: ol.saliency(model, image, 1))(x)
    x_leaf = x.clone().requires_grad_()
    second = ol.saliency(model, x_leaf, 1)
    (curvature,) = torch.autograd.grad(second.sum(), x_leaf)
    assert not calls
    eager = ol.saliency(model, x, 1)
    assert calls
    assert rel(batched, eager) < 1e-12 and rel(second.detach(), eager) < 1e-12
    assert torch.isfinite(curvature).all()


def test_model_and_input_untouched_and_no_parameter_gradients():
    model = testing.alexnet()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    before, x_before = ModelState.of(model), tensor_state(x)
    ol.saliency(model, x, 1)
    ol.saliency(ol.guided(model), x, 1)
    assert_untouched(model, before)
    assert tensor_state(x) == x_before
    assert all(p.grad is None for p in model.parameters())


def test_float32_agrees_with_the_default_kernel_to_rounding():
    model = testing.resnet18()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 5])
    leaf = x.clone().requires_grad_()
    (reference,) = torch.autograd.grad(model(leaf)[torch.arange(2), target].sum(), leaf)
    assert rel(ol.saliency(model, x, target), reference) < 1e-5


# ---------------------------------------------------------------- max pools


@st.composite
def pool_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dy, dx = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    py, px = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    reach_y, reach_x = dy * (kh - 1) + 1, dx * (kw - 1) + 1
    return {
        "shape": (
            draw(st.integers(1, 3)),
            draw(st.integers(1, 6)),
            draw(st.integers(reach_y, 20)),
            draw(st.integers(reach_x, 20)),
        ),
        "kernel": (kh, kw),
        "stride": draw(st.sampled_from([None, (1, 1), (2, 2), (2, 1), (3, 2)])),
        "padding": (py, px),
        "dilation": (dy, dx),
        "ceil_mode": draw(st.booleans()),
        "values": draw(st.sampled_from(["random", "ties", "relu zeros", "nan"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _pool_input(case) -> torch.Tensor:
    rng = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    if case["values"] == "ties":
        return torch.randint(0, 3, shape, generator=rng).double()
    x = torch.randn(shape, generator=rng, dtype=torch.float64)
    if case["values"] == "relu zeros":
        return x.clamp(min=0)
    if case["values"] == "nan":
        x[torch.rand(shape, generator=rng) > 0.9] = float("nan")
    return x


@given(pool_case())
def test_channels_last_pools_give_the_same_bits_forward_and_backward(case):
    """Values, gradients, ties (integers, ReLU zeros) and NaNs: torch.equal to the default."""
    x = _pool_input(case)
    options = {k: case[k] for k in ("stride", "padding", "dilation", "ceil_mode")}

    def pooled(mode: bool):
        leaf = x.clone().requires_grad_()
        if mode:
            with fast_kernels():
                out = F.max_pool2d(leaf, case["kernel"], **options)
        else:
            out = F.max_pool2d(leaf, case["kernel"], **options)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).double()
        (gradient,) = torch.autograd.grad(out, leaf, grad)
        return out, gradient

    (out, gradient), (ref_out, ref_gradient) = pooled(True), pooled(False)
    assert out.is_contiguous() and gradient.is_contiguous()
    assert torch.equal(out.nan_to_num(7.0), ref_out.nan_to_num(7.0))
    assert torch.equal(gradient, ref_gradient)


def _pool_routes(monkeypatch) -> list:
    calls: list = []
    original = fast_kernels_module._ChannelsLastMaxPool2d.forward

    def spy(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(fast_kernels_module._ChannelsLastMaxPool2d, "forward", staticmethod(spy))
    return calls


@pytest.mark.parametrize(
    ("call", "routed"),
    [
        (lambda x: F.max_pool2d(x, 3, 2, 1), True),
        (lambda x: torch.max_pool2d(x, 2), True),
        (lambda x: nn.MaxPool2d(3, 2)(x), True),
        (lambda x: F.max_pool2d(x, 2, return_indices=True)[0], False),
        (lambda x: F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2), False),
        (lambda x: F.max_pool2d(x[:, :, :, ::2], 2), False),  # a strided view
        (lambda x: F.max_pool2d(x.repeat(1, 367, 1, 1), 2), False),  # > POOL_ELEMENTS per image
    ],
    ids=["F", "torch", "module", "indices", "channels-last", "strided", "large"],
)
def test_which_pools_run_channels_last(call, routed, monkeypatch):
    assert POOL_ELEMENTS < 3 * 367 * 32 * 32
    calls = _pool_routes(monkeypatch)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ours = ol.saliency(lambda t: call(t).flatten(1)[:, :4], x, 1)
    assert bool(calls) == routed, calls
    leaf = x.clone().requires_grad_()
    (reference,) = torch.autograd.grad(call(leaf).flatten(1)[:, 1].sum(), leaf)
    assert torch.equal(ours, reference)


def test_reference_pools_route_and_saliency_is_unchanged_bit_for_bit(monkeypatch):
    """AlexNet's three pools and ResNet18's one take the route; with the stem rule off, the
    saliency maps are the default kernels' bits."""
    monkeypatch.setattr(fast_kernels_module, "MAX_CHANNELS", 0)
    for name, pools in (("alexnet", 3), ("resnet18", 1)):
        calls = _pool_routes(monkeypatch)
        model = getattr(testing, name)()
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(9))
        ours = ol.saliency(model, x, torch.tensor([1, 4]))
        assert len(calls) == pools, (name, calls)
        leaf = x.clone().requires_grad_()
        (reference,) = torch.autograd.grad(
            model(leaf)[torch.arange(2), torch.tensor([1, 4])].sum(), leaf
        )
        assert torch.equal(ours, reference), name
