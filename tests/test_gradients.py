"""Gradient attributions against torch.autograd, hand-written references, Captum and closed forms."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _nets import SPELLINGS, DenseNetTail, Spelled, reference_gradient
from _state import ModelState, assert_untouched, tensor_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens import targets as T
from occlens import testing


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def captum(explainer, model, x, **kwargs):
    """A Captum attribution on a copy of `x` (Captum flips requires_grad on its inputs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return explainer(model).attribute(x.clone(), **kwargs).detach()


@pytest.fixture(scope="module")
def alexnet():
    return testing.alexnet().double()


@pytest.fixture(scope="module")
def resnet18():
    return testing.resnet18().double()


def images(n=2, size=64, seed=0, dtype=torch.float64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- saliency against torch.autograd ------------------------------------------------------------


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_saliency_equals_autograd_at_the_input(name, request):
    model, x, t = request.getfixturevalue(name), images(), torch.tensor([3, 7])
    torch.testing.assert_close(
        ol.saliency(model, x, t), reference_gradient(model, x, t), rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize(
    ("name", "at"),
    [
        ("alexnet", "features.3"),
        ("alexnet", "features.10"),
        ("resnet18", "layer2"),
        ("resnet18", "layer3.1.conv1"),
        ("resnet18", "relu"),
    ],
)
def test_saliency_at_a_layer_equals_autograd(name, at, request):
    """Reference: add a zero `delta` to the layer's output with a hook, differentiate wrt delta.

    That is the gradient wrt the layer's output before any in-place op after it (AlexNet's
    in-place ReLUs overwrite the conv outputs; ResNet's shared `relu` is taken at its first call).
    """
    model, x, t = request.getfixturevalue(name), images(), torch.tensor([3, 7])
    deltas = []

    def add_delta(module, args, out):
        if deltas:
            return None
        deltas.append(torch.zeros_like(out, requires_grad=True))
        return out + deltas[0]

    handle = model.get_submodule(at).register_forward_hook(add_delta)
    try:
        score = model(x).gather(1, t.view(-1, 1)).sum()
    finally:
        handle.remove()
    (expected,) = torch.autograd.grad(score, deltas[0])
    ours = ol.saliency(model, x, t, at=at)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-12)


def test_batch_equals_the_per_image_loop(resnet18):
    x, t = images(3, seed=1), torch.tensor([1, 5, 9])
    batch = ol.saliency(resnet18, x, t)
    for i in range(3):
        torch.testing.assert_close(
            batch[i], ol.saliency(resnet18, x[i], int(t[i])), rtol=1e-10, atol=1e-14
        )


def test_targets_at_a_layer_unit_and_peak(alexnet):
    x = images(1, seed=2)[0]
    conv = ol.layer(alexnet, "features.8")
    with torch.no_grad():
        fmap = conv(x[None])[0, 5]
    y, xx = divmod(int(fmap.argmax()), fmap.shape[1])
    peak = ol.saliency(conv, x, T.peak(5))
    torch.testing.assert_close(peak, ol.saliency(conv, x, T.unit(5, y, xx)), rtol=0, atol=0)
    xr = x.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(conv(xr[None])[0, 5].mean(), xr)
    torch.testing.assert_close(ol.saliency(conv, x, T.channel(5)), expected, rtol=1e-6, atol=1e-12)


# --- guided backprop and deconvnet against hand-written references ------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_rewired_relus_equal_the_reference_for_every_spelling(spelling, rule):
    # float64: the stem's input gradient sums in another order than the reference's kernel
    # (occlens._stem_backward), which in float32 moves near-zero entries by 3e-7.
    model = Spelled(spelling).double().eval()
    reference = Spelled(spelling, rule=rule).double().eval()
    x, t = (
        torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64),
        torch.tensor([0, 2, 4]),
    )
    rewire = ol.guided if rule == "guided" else ol.deconvnet
    ours = ol.saliency(rewire(model), x, t)
    expected = reference_gradient(reference, x, t)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(ours, reference_gradient(model, x, t)), (
        "the rule must change the gradient"
    )


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_exported_programs_are_rewired_through_their_aten_operators(rule):
    """torch.export graphs call aten.relu / aten.relu_ directly; they get the same rules."""
    model = Spelled("nn.ReLU(inplace)").eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (x,)).module()
    calls = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert calls & {"aten.relu.default", "aten.relu_.default"}, calls
    rewire = getattr(ol, rule)
    expected = ol.saliency(rewire(model), x, 1)
    assert not torch.allclose(expected, ol.saliency(model, x, 1))  # the rule matters here
    torch.testing.assert_close(ol.saliency(rewire(exported), x, 1), expected)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_exported_smooth_activation_is_refused(rule):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (x,)).module()
    with pytest.raises(ol.OcclensError, match=r"silu.*smooth activation"):
        ol.saliency(getattr(ol, rule)(exported), x, 1)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_densenet_style_functional_inplace_relu_is_caught(rule):
    model, reference = DenseNetTail().eval(), DenseNetTail(rule=rule).eval()
    x, t = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(5)), torch.tensor([1, 3])
    rewire = ol.guided if rule == "guided" else ol.deconvnet
    torch.testing.assert_close(
        ol.saliency(rewire(model), x, t), reference_gradient(reference, x, t), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("rewire", [ol.guided, ol.deconvnet])
def test_a_model_without_rectifiers_gets_the_vanilla_gradient(rewire):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.randn(2, 3, 6, 6)
    model(x)
    torch.testing.assert_close(
        ol.saliency(rewire(model), x, 1), ol.saliency(model, x, 1), rtol=0, atol=0
    )


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_guided_and_deconvnet_equal_captum(name, request):
    from captum.attr import Deconvolution, GuidedBackprop

    model, x, t = request.getfixturevalue(name), images(seed=6), torch.tensor([2, 8])
    guided = captum(GuidedBackprop, model, x, target=t)
    deconv = captum(Deconvolution, model, x, target=t)
    assert rel(ol.saliency(ol.guided(model), x, t), guided) <= 1e-5
    assert rel(ol.saliency(ol.deconvnet(model), x, t), deconv) <= 1e-5


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_saliency_and_input_x_gradient_equal_captum(name, request):
    from captum.attr import InputXGradient, Saliency

    model, x, t = request.getfixturevalue(name), images(seed=7), torch.tensor([0, 9])
    assert rel(ol.saliency(model, x, t), captum(Saliency, model, x, target=t, abs=False)) <= 1e-5
    assert rel(ol.input_x_gradient(model, x, t), captum(InputXGradient, model, x, target=t)) <= 1e-5


def _gate_reference(activation, x, g):
    """f'(x) * relu(g) by autograd on the plain activation, for the guided rule's check."""
    xr = x.detach().clone().requires_grad_()
    (derivative,) = torch.autograd.grad(activation(xr), xr, g.clamp(min=0))
    return derivative


@pytest.mark.parametrize(
    ("module", "functional"),
    [
        (nn.ReLU6(), lambda x: F.relu6(x)),
        (nn.Hardtanh(-0.5, 0.7), lambda x: F.hardtanh(x, -0.5, 0.7)),
        (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2)),
        (nn.Threshold(0.1, 0.0), lambda x: F.threshold(x, 0.1, 0.0)),
    ],
    ids=["relu6", "hardtanh", "leaky_relu", "threshold"],
)
def test_other_rectifiers_follow_the_documented_rules(module, functional):
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(8)) * 4
    g = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    model = nn.Sequential(module).eval()

    def score_with(rewire):
        fn = rewire(model)
        return torch.func.vjp(fn, x)[1](g)[0]

    torch.testing.assert_close(score_with(ol.guided), _gate_reference(functional, x, g))
    torch.testing.assert_close(score_with(ol.deconvnet), g.clamp(min=0))


def test_prelu_uses_its_learned_slopes():
    prelu = nn.PReLU(2, init=0.3)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.3, -0.2]))
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(10))
    g = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(11))
    guided = torch.func.vjp(ol.guided(prelu), x)[1](g)[0]
    torch.testing.assert_close(guided, _gate_reference(prelu, x, g))


@pytest.mark.parametrize(
    "act", [nn.SiLU(), nn.GELU(), nn.ELU(), nn.Mish(), nn.Hardswish(), nn.Softplus()]
)
def test_smooth_activations_raise_unless_asked_to_gate(act):
    model = nn.Sequential(nn.Conv2d(3, 2, 1), act, nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(12))
    model(x)
    before = ModelState.of(model)
    name = type(act).__name__.lower()
    with pytest.raises(
        ol.OcclensError,
        match=rf"guided\(model_fn\): the model calls torch\.nn\.functional\.{name}.*smooth='gate'",
    ):
        ol.saliency(ol.guided(model), x, 0)
    assert torch._C._len_torch_function_stack() == 0
    assert_untouched(model, before)
    gated = ol.saliency(ol.guided(model, smooth="gate"), x, 0)
    xr = x.detach().clone().requires_grad_()
    hidden = act(model[0](xr))
    (g_hidden,) = torch.autograd.grad(model[3](model[2](hidden))[:, 0].sum(), hidden)
    (expected,) = torch.autograd.grad(hidden, xr, g_hidden.clamp(min=0))
    torch.testing.assert_close(gated, expected, rtol=1e-6, atol=1e-7)


def test_torchscript_models_are_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; still used
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()))
    with pytest.raises(ol.OcclensError, match=r"guided\(model_fn\): a TorchScript model"):
        ol.guided(scripted)


# --- integrated gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle"]
)
def test_integrated_gradients_equal_captum(alexnet, method):
    from captum.attr import IntegratedGradients

    x, t = images(seed=13), torch.tensor([4, 6])
    theirs = captum(
        IntegratedGradients, alexnet, x, target=t, n_steps=12, method=method, internal_batch_size=7
    )
    assert (
        rel(ol.integrated_gradients(alexnet, x, t, steps=12, method=method, chunk_size=5), theirs)
        <= 1e-5
    )


def test_trapezoid_is_the_true_trapezoid_rule_not_captums(alexnet):
    """Captum's riemann_trapezoid weights sum to (n - 1) / n; ours sum to 1 (completeness)."""
    from captum.attr import IntegratedGradients

    x, t, n = images(1, seed=14), torch.tensor([1]), 10
    theirs = captum(
        IntegratedGradients, alexnet, x, target=t, n_steps=n, method="riemann_trapezoid"
    )
    ours = ol.integrated_gradients(alexnet, x, t, steps=n, method="riemann_trapezoid")
    assert rel(ours, theirs * n / (n - 1)) <= 1e-5


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_integrated_gradients_completeness_at_200_steps(name, request):
    model = request.getfixturevalue(name)
    x, t = images(2, seed=15), torch.tensor([3, 5])
    baseline = torch.zeros_like(x)
    ig = ol.integrated_gradients(model, x, t, steps=200)
    with torch.no_grad():
        gap = (
            model(x).gather(1, t.view(-1, 1))[:, 0] - model(baseline).gather(1, t.view(-1, 1))[:, 0]
        )
    error = (ig.sum(dim=(1, 2, 3)) - gap).abs() / gap.abs()
    assert (error <= 0.01).all(), error


def test_integrated_gradients_closed_form():
    """f(x) = sum(w * x)^2 from baseline b: IG = w * (x - b) * (s(x) + s(b)) exactly."""
    w = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(16), dtype=torch.float64)

    def model(x):
        return ((w * x).sum(dim=(1, 2, 3)) ** 2)[:, None]

    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    b = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    expected = w * (x - b) * ((w * x).sum() + (w * b).sum())
    ours = ol.integrated_gradients(model, x, 0, baseline=b, steps=3)  # Gauss-Legendre: exact
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


@given(chunk=st.integers(1, 13))
def test_integrated_gradients_chunked_equals_unchunked(chunk):
    model, x = testing.tiny_cnn().double(), images(2, size=12, seed=19)
    whole = ol.integrated_gradients(model, x, torch.tensor([0, 2]), steps=13, chunk_size=13)
    part = ol.integrated_gradients(model, x, torch.tensor([0, 2]), steps=13, chunk_size=chunk)
    torch.testing.assert_close(part, whole, rtol=1e-12, atol=1e-14)


# --- nothing is left behind --------------------------------------------------------------------


def test_nothing_is_left_on_the_model_also_after_an_exception():
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            x = F.relu(self.conv(x))
            raise RuntimeError("inside the model")

    model = Fails().eval()
    before = ModelState.of(model)
    x = torch.randn(2, 3, 6, 6).requires_grad_()
    x_before = tensor_state(x)
    for rewire in (ol.guided, ol.deconvnet):
        with pytest.raises(ol.OcclensError, match="inside the model"):
            ol.saliency(rewire(model), x, 0)
        assert torch._C._len_torch_function_stack() == 0
    assert_untouched(model, before)
    assert tensor_state(x) == x_before
    working = Spelled("nn.ReLU(inplace)").eval()
    before = ModelState.of(working)
    ol.saliency(ol.guided(working), x.detach(), 1)
    ol.integrated_gradients(working, x.detach(), 1, steps=4)
    ol.saliency(working, x.detach(), 1, at="conv2")
    assert_untouched(working, before)
    assert all(p.grad is None for p in working.parameters())


def test_numpy_integer_targets_equal_torch_targets():
    """Labels from a numpy pipeline: np.int64 scalars, integer arrays, lists of numpy ints."""
    import numpy as np

    model, x = (
        testing.tiny_cnn(),
        torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
    )
    both, one = ol.saliency(model, x, torch.tensor([2, 1])), ol.saliency(model, x, 2)
    for target, expected in [
        (np.int64(2), one),
        (np.int32(2), one),
        (np.array([2, 1]), both),
        (np.array([2, 1], dtype=np.uint8), both),
        ([np.int64(2), np.int64(1)], both),
    ]:
        assert torch.equal(ol.saliency(model, x, target), expected)
    assert torch.equal(
        ol.occlusion(model, x, np.array([2, 1]), window=4, stride=4),
        ol.occlusion(model, x, torch.tensor([2, 1]), window=4, stride=4),
    )
    for bad in (np.bool_(True), np.array([2.0, 1.0]), np.array([[2, 1]])):
        with pytest.raises(ol.OcclensError, match=r"saliency\(target\): cannot use"):
            ol.saliency(model, x, bad)
