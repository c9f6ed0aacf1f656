"""The combinator's laws, SmoothGrad's contract, and composition under vmap and grad."""

from __future__ import annotations

import pytest
import torch
from _nets import Spelled
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import grad, vmap

import occlens as ol
from occlens import maps as M
from occlens import testing


def images(n=2, size=12, seed=0, dtype=torch.float64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def smooth_model(seed=0):
    """A model with a non-zero second derivative (tanh), for gradients of gradients."""
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))
        .double()
        .eval()
    )


def scaled(factor):
    """A transform that multiplies a method's maps by `factor`, a stand-in for any transform."""

    def transform(method):
        def wrapped(model_fn, x, target, *, key=None, **options):
            return factor * method(model_fn, x, target, **options)

        wrapped.factor = factor
        return wrapped

    return transform


def shifted(offset):
    def transform(method):
        def wrapped(model_fn, x, target, *, key=None, **options):
            return method(model_fn, x, target, **options) + offset

        return wrapped

    return transform


# --- chain's laws ------------------------------------------------------------------------------


def test_chain_of_nothing_and_identity_change_nothing():
    assert ol.chain()(ol.saliency) is ol.saliency
    assert ol.identity()(ol.saliency) is ol.saliency
    assert ol.chain(ol.identity(), ol.identity())(ol.saliency) is ol.saliency


@given(
    a=st.floats(-3, 3, allow_nan=False),
    b=st.floats(-3, 3, allow_nan=False),
    c=st.floats(-3, 3, allow_nan=False),
)
@settings(max_examples=25, deadline=None)
def test_chain_is_composition_in_data_flow_order_and_associative(a, b, c):
    # scale and shift do not commute, so the order of application shows in the numbers.
    model, x = testing.tiny_cnn().double(), images(1)[0]
    first, second, third = scaled(a), shifted(b), scaled(c)
    by_hand = third(second(first(ol.saliency)))(model, x, 1)
    expected = c * (a * ol.saliency(model, x, 1) + b)
    torch.testing.assert_close(by_hand, expected)
    assert torch.equal(
        ol.chain(first, second)(ol.saliency)(model, x, 1), b + a * ol.saliency(model, x, 1)
    )
    left = ol.chain(ol.chain(first, second), third)(ol.saliency)(model, x, 1)
    right = ol.chain(first, ol.chain(second, third))(ol.saliency)(model, x, 1)
    flat = ol.chain(first, second, third)(ol.saliency)(model, x, 1)
    assert torch.equal(left, by_hand) and torch.equal(right, by_hand) and torch.equal(flat, by_hand)


def test_chain_of_real_transforms_equals_nesting():
    model, x = testing.tiny_cnn().double(), images(2)
    smooth, heat = ol.smoothgrad(n=4, sigma=0.1), ol.map_output(M.abs, M.max_channels)
    chained = ol.chain(smooth, heat)(ol.saliency)(model, x, 1, key=3)
    nested = heat(smooth(ol.saliency))(model, x, 1, key=3)
    assert torch.equal(chained, nested)
    assert chained.shape == (2, 12, 12) and (chained >= 0).all()


def test_map_output_on_a_batch_equals_the_per_image_loop():
    model, x, t = testing.tiny_cnn().double(), images(3), torch.tensor([0, 2, 1])
    heat = ol.map_output(M.abs, M.sum_channels, M.normalize)(ol.saliency)
    batch = heat(model, x, t)
    for i in range(3):
        single = heat(model, x[i], int(t[i]))
        torch.testing.assert_close(batch[i], single, rtol=1e-12, atol=1e-12)
        raw = ol.saliency(model, x[i], int(t[i])).abs().sum(0)
        torch.testing.assert_close(single, (raw - raw.min()) / (raw.max() - raw.min()))


# --- SmoothGrad --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mean", "square", "var"])
def test_smoothgrad_with_sigma_zero_is_the_wrapped_method(kind):
    model, x = testing.tiny_cnn().double(), images(2)
    plain = ol.saliency(model, x, 2)
    smooth = ol.smoothgrad(n=5, sigma=0.0, kind=kind)(ol.saliency)(model, x, 2)
    expected = {"mean": plain, "square": plain**2, "var": torch.zeros_like(plain)}[kind]
    assert torch.equal(smooth, expected)


@pytest.mark.parametrize("kind", ["mean", "square", "var"])
def test_smoothgrad_equals_a_loop_over_the_same_noise(kind):
    """An independent reference: draw the noise as documented (one [C, H, W] draw per copy,
    shared by the images and scaled per image), average by hand."""
    model, x, n, sigma = testing.tiny_cnn().double(), images(2, seed=4), 6, 0.2
    rng = torch.Generator().manual_seed(7)
    ol._combine.derive_key(rng)  # the transform first derives its inner key
    scale = sigma * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    maps = torch.stack(
        [
            ol.saliency(model, x + scale * torch.randn(x.shape[1:], generator=rng).double(), 1)
            for _ in range(n)
        ]
    )
    expected = {
        "mean": maps.mean(0),
        "square": (maps**2).mean(0),
        "var": maps.var(0, unbiased=False),
    }[kind]
    ours = ol.smoothgrad(n=n, sigma=sigma, kind=kind)(ol.saliency)(model, x, 1, key=7)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-14)


@given(chunk=st.integers(1, 9), key=st.integers(0, 2**31))
@settings(max_examples=20, deadline=None)
def test_smoothgrad_same_key_same_result_for_any_chunk_size(chunk, key):
    model, x = testing.tiny_cnn().double(), images(2, seed=5)
    whole = ol.smoothgrad(n=9, sigma=0.1, kind="var")(ol.saliency)(model, x, 0, key=key)
    part = ol.smoothgrad(n=9, sigma=0.1, kind="var", chunk_size=chunk)(ol.saliency)
    again = part(model, x, 0, key=key)
    # the same noise in the same order; only the conv kernels' batch size differs.
    torch.testing.assert_close(again, whole, rtol=1e-12, atol=1e-15)
    assert torch.equal(again, part(model, x, 0, key=key))


def test_smoothgrad_keys_generators_and_global_state():
    model, x = testing.tiny_cnn().double(), images(1)
    smooth = ol.smoothgrad(n=4, sigma=0.2)(ol.saliency)
    state = torch.random.get_rng_state()
    one = smooth(model, x, 0, key=1)
    assert not torch.equal(one, smooth(model, x, 0, key=2))
    caller = torch.Generator().manual_seed(1)
    caller_state = caller.get_state()
    assert torch.equal(smooth(model, x, 0, key=caller), one)
    assert torch.equal(caller.get_state(), caller_state)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(ol.OcclensError, match=r"smoothgrad.*key"):
        smooth(model, x, 0)


def test_smoothgrad_peak_target_is_resolved_on_the_clean_input():
    model, x = testing.tiny_cnn().double(), images(2, seed=8)
    conv = ol.layer(model, "features.2")
    clean = conv(x)[:, 1]  # [B, H, W]
    flat = clean.flatten(1).argmax(1)
    ys, xs = flat // clean.shape[-1], flat % clean.shape[-1]
    smooth = ol.smoothgrad(n=3, sigma=0.5)(ol.saliency)
    pinned = smooth(conv, x, ol.targets.unit(1, ys, xs), key=0)
    assert torch.equal(smooth(conv, x, ol.targets.peak(1), key=0), pinned)
    assert pinned.abs().sum() > 0


# --- composition under vmap and grad -----------------------------------------------------------


def test_vmap_over_images_of_a_guided_smoothgrad_pipeline_equals_the_loop():
    model = Spelled("F.relu").double().eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    explain = ol.chain(ol.smoothgrad(n=5, sigma=0.15), ol.map_output(M.abs, M.max_channels))
    pipeline = explain(ol.saliency)
    guided = ol.guided(model)
    batched = vmap(lambda xi: pipeline(guided, xi, 1, key=11), randomness="same")(x)
    loop = torch.stack([pipeline(guided, xi, 1, key=11) for xi in x])
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-14)
    assert batched.shape == (3, 8, 8) and batched.abs().sum() > 0


def second_derivative_reference(model, x, target):
    """d/dx sum(saliency(x)^2) by plain double backward."""
    leaf = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(model(leaf[None])[0, target], leaf, create_graph=True)
    (second,) = torch.autograd.grad(first.pow(2).sum(), leaf)
    return second


def test_grad_of_saliency_equals_double_backward():
    model, x = smooth_model(), images(2, size=12, seed=10)
    objective = lambda xi: ol.saliency(model, xi, 1).pow(2).sum()  # noqa: E731
    for xi in x:
        expected = second_derivative_reference(model, xi, 1)
        assert expected.abs().max() > 0
        torch.testing.assert_close(grad(objective)(xi), expected, rtol=1e-10, atol=1e-14)
        leaf = xi.clone().requires_grad_()
        (plain,) = torch.autograd.grad(objective(leaf), leaf)
        torch.testing.assert_close(plain, expected, rtol=1e-10, atol=1e-14)
    over_batch = grad(lambda xs: vmap(lambda xi: ol.saliency(model, xi, 1))(xs).pow(2).sum())(x)
    expected = torch.stack([second_derivative_reference(model, xi, 1) for xi in x])
    torch.testing.assert_close(over_batch, expected, rtol=1e-10, atol=1e-14)


def test_grad_of_integrated_gradients_and_smoothgrad_equal_autograd():
    model, x = smooth_model(1), images(1, size=12, seed=12)[0]
    ig = lambda xi, c: ol.integrated_gradients(model, xi, 2, steps=6, chunk_size=c)  # noqa: E731
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(ig(leaf, 6).pow(2).sum(), leaf)
    assert expected.abs().max() > 0
    for chunk in (1, 4, 6):
        torch.testing.assert_close(
            grad(lambda xi, c=chunk: ig(xi, c).pow(2).sum())(x), expected, rtol=1e-10, atol=1e-14
        )
    smooth = ol.smoothgrad(n=3, sigma=0.1)(ol.saliency)
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(smooth(model, leaf, 0, key=4).pow(2).sum(), leaf)
    ours = grad(lambda xi: smooth(model, xi, 0, key=4).pow(2).sum())(x)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-14)
