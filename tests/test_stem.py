"""The linear-stem shortcut of integrated_gradients and SmoothGrad-of-saliency.

References are independent of occlens's path: a plain loop of ``torch.autograd.grad`` over the
interpolated or noisy images, weighted by hand; and occlens with the shortcut switched off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _state import ModelState, assert_untouched, tensor_state
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import occlens as ol
import occlens._integrated as integrated_module
import occlens._smoothgrad as smoothgrad_module
from occlens import testing
from occlens._combine import derive_key
from occlens._stem import linear_stem


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=rng, dtype=torch.float64)


def input_gradient(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().requires_grad_()
    (gradient,) = torch.autograd.grad(model(leaf)[torch.arange(len(x)), target].sum(), leaf)
    return gradient


def find(model_fn, x: torch.Tensor):
    """The stem, as a long call (many copies, a slow clean pass) would look for it."""
    return linear_stem(model_fn, x, "test", copies=2)


def ig_loop(model, x, target, baseline, steps):
    """Gauss-Legendre IG, one autograd call per integration point."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x)
    for node, weight in zip(0.5 * (nodes + 1), 0.5 * weights, strict=True):
        total += weight * input_gradient(model, baseline + node * (x - baseline), target)
    return total * (x - baseline)


@pytest.fixture
def no_stem(monkeypatch):
    """Switch the shortcut off: every gradient goes through the model's input."""
    monkeypatch.setattr(integrated_module, "linear_stem", lambda *args, **kwargs: None)
    monkeypatch.setattr(smoothgrad_module, "linear_stem", lambda *args, **kwargs: None)


# --- which models have a stem ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"), [("alexnet", "features.0"), ("resnet18", "conv1"), ("vgg16", "features.0")]
)
def test_reference_architectures_have_a_linear_stem(name, stem):
    model, x = getattr(testing, name)(), torch.rand(1, 3, 32, 32)
    assert find(model, x).name == stem
    assert find(ol.guided(model), x).name == stem


class InputSkip(nn.Module):
    """The input also reaches the output past the first convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head((torch.relu(self.conv(x)) * x).mean(dim=(2, 3)))


class Squared(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) ** 2


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.conv(torch.relu(self.conv(x))).mean(dim=(2, 3)))


class Branching(nn.Module):
    """Control flow on a traced value: torch.fx cannot trace it (the branch is always taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[0] > 0:
            y = torch.relu(y)
        return self.head(y.mean(dim=(2, 3)))


def squaring_stem() -> nn.Module:
    return nn.Sequential(Squared(3, 4, 3), nn.Flatten(), nn.LazyLinear(4))


@pytest.mark.parametrize("make", [InputSkip, Twice, Branching, squaring_stem])
def test_no_stem_where_the_input_is_not_read_through_one_linear_layer(make):
    model, x = make().double(), images(2, 8, seed=0)
    model(x)  # materialise lazy layers
    assert find(model, x) is None
    target = torch.tensor([0, 3])
    ours = ol.integrated_gradients(model, x, target, steps=5)
    torch.testing.assert_close(ours, ig_loop(model, x, target, torch.zeros_like(x), 5))


def test_no_stem_for_functions_transforms_and_differentiated_inputs():
    model, x = testing.tiny_cnn().double(), images(2, 8, seed=0)
    assert find(lambda v: model(v), x) is None
    assert find(model, x.clone().requires_grad_()) is None
    found = torch.func.vmap(lambda v: torch.tensor(find(model, v[None]) is None))(x)
    assert found.all()


def test_a_hook_on_the_first_layer_turns_the_shortcut_off_and_still_applies():
    model, x, target = testing.tiny_cnn().double(), images(2, 12, seed=3), torch.tensor([1, 2])
    handle = model.features[0].register_forward_hook(lambda module, args, out: out**2)
    try:
        assert find(model, x) is None
        ours = ol.integrated_gradients(model, x, target, steps=6)
        torch.testing.assert_close(ours, ig_loop(model, x, target, torch.zeros_like(x), 6))
    finally:
        handle.remove()


# --- the shortcut computes the same numbers ----------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "alexnet", "resnet18"])
def test_integrated_gradients_through_the_stem_equal_the_loop(name):
    model = getattr(testing, name)().double()
    x, baseline = images(2, 64, seed=5), images(1, 64, seed=6)
    target = torch.tensor([2, 0])
    assert find(model, x) is not None
    ours = ol.integrated_gradients(model, x, target, baseline=baseline[0], steps=9, chunk_size=4)
    expected = ig_loop(model, x, target, baseline.expand_as(x), 9)
    assert rel(ours, expected) < 1e-10


@pytest.mark.parametrize("rule", ["vanilla", "guided"])
def test_smoothgrad_through_the_stem_equals_the_loop(rule):
    """The noise drawn as documented (one draw per copy, scaled per image), averaged by hand."""
    model = testing.alexnet().double()
    model_fn = ol.guided(model) if rule == "guided" else model
    x, n, sigma, target = images(2, 64, seed=8), 5, 0.2, torch.tensor([1, 3])
    rng = torch.Generator().manual_seed(11)
    derive_key(rng)  # the transform first derives its inner key
    scale = sigma * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    maps = [
        ol.saliency(model_fn, x + scale * torch.randn(x.shape[1:], generator=rng).double(), target)
        for _ in range(n)
    ]
    expected = torch.stack(maps).mean(0)
    ours = ol.smoothgrad(n=n, sigma=sigma, chunk_size=2)(ol.saliency)(model_fn, x, target, key=11)
    assert rel(ours, expected) < 1e-10


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_float32_results_match_the_path_without_the_shortcut(name, request):
    model, x = getattr(testing, name)(), images(2, 96, seed=2).float()
    target = torch.tensor([4, 7])
    smooth = ol.smoothgrad(n=6, sigma=0.15)(ol.saliency)
    with_stem = (
        ol.integrated_gradients(model, x, target, steps=8),
        smooth(model, x, target, key=0),
    )
    request.getfixturevalue("no_stem")
    without = (ol.integrated_gradients(model, x, target, steps=8), smooth(model, x, target, key=0))
    for ours, plain in zip(with_stem, without, strict=True):
        assert rel(ours, plain) < 1e-5  # the same forward passes; sums in another order


def test_other_smoothgrad_kinds_and_methods_do_not_take_the_shortcut(monkeypatch):
    calls = []
    monkeypatch.setattr(smoothgrad_module, "linear_stem", lambda *a, **k: calls.append(a))
    model, x = testing.tiny_cnn(), images(1, 16, seed=0).float()
    ol.smoothgrad(n=2, kind="square")(ol.saliency)(model, x, 0, key=0)
    ol.smoothgrad(n=2)(ol.input_x_gradient)(model, x, 0, key=0)
    ol.smoothgrad(n=2)(ol.saliency)(model, x, 0, key=0, at="features.0")
    assert calls == []
    ol.smoothgrad(n=2)(ol.saliency)(model, x, 0, key=0)
    assert len(calls) == 1


@st.composite
def stems(draw):
    """A random first layer that is linear in its input, followed by a small nonlinear rest."""
    if draw(st.booleans()):
        out = draw(st.integers(1, 4))
        layer = nn.Conv2d(
            3,
            out,
            kernel_size=draw(st.integers(1, 4)),
            stride=draw(st.integers(1, 3)),
            padding=draw(st.integers(0, 2)),
            dilation=draw(st.integers(1, 2)),
            bias=draw(st.booleans()),
            padding_mode=draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"])),
        )
        rest = [nn.ReLU(inplace=draw(st.booleans())), nn.AdaptiveMaxPool2d(2), nn.Flatten()]
        features = 4 * out
    else:
        layer, rest, features = nn.Linear(8, 5), [nn.Tanh(), nn.Flatten()], 3 * 8 * 5
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return nn.Sequential(layer, *rest, nn.Linear(features, 3)).double()


@given(model=stems(), steps=st.integers(1, 6), chunk=st.integers(1, 6), seed=st.integers(0, 99))
@settings(max_examples=25, deadline=None)
def test_any_linear_stem_gives_the_loops_integrated_gradients(model, steps, chunk, seed):
    x, baseline = images(2, 8, seed), images(2, 8, seed + 1)
    target = torch.tensor([0, 2])
    assert find(model, x) is not None
    ours = ol.integrated_gradients(
        model, x, target, baseline=baseline, steps=steps, chunk_size=chunk
    )
    torch.testing.assert_close(ours, ig_loop(model, x, target, baseline, steps))


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
@pytest.mark.parametrize("rule", ["vanilla", "guided"])
def test_an_error_after_the_stem_is_reported_and_leaves_the_model_untouched(method, rule):
    """The tail raises on its second call (the first is the clean pass): inside the shortcut."""
    model, x = testing.alexnet(), images(2, 64, seed=1).float()
    model_fn = ol.guided(model) if rule == "guided" else model
    assert find(model_fn, x) is not None
    calls = []

    def boom(module, args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom in the tail")

    before, x_before = ModelState.of(model), tensor_state(x)
    handle = model.features[3].register_forward_pre_hook(boom)
    run = {
        "integrated_gradients": lambda: ol.integrated_gradients(model_fn, x, 1, steps=3),
        "smoothgrad": lambda: ol.smoothgrad(n=3)(ol.saliency)(model_fn, x, 1, key=0),
    }[method]
    try:
        with pytest.raises(ol.OcclensError, match=rf"{method}\(model_fn\): the model raised.*boom"):
            run()
    finally:
        handle.remove()
    assert_untouched(model, before)
    assert tensor_state(x) == x_before
    assert not torch._C._len_torch_function_stack()  # the guided mode was left


def test_one_copy_does_not_look_for_the_stem(monkeypatch):
    """One copy has nothing to share; the choice never depends on timings (the same call must
    give the same numbers every time)."""
    model, x = testing.alexnet(), images(1, 64, seed=0).float()
    assert linear_stem(model, x, "test", copies=1) is None
    traced = []
    monkeypatch.setattr("occlens._stem._trace", lambda *a: traced.append(a))
    ol.smoothgrad(n=1, sigma=0.1)(ol.saliency)(testing.tiny_cnn(), x, 1, key=0)
    ol.integrated_gradients(testing.tiny_cnn(), x, 1, steps=1)
    assert traced == []
    ol.integrated_gradients(testing.tiny_cnn(), x, 1, steps=2)
    assert len(traced) == 1


@pytest.mark.parametrize("name", ["tiny_cnn", "alexnet"])
def test_the_same_call_gives_identical_numbers(name):
    model, x = getattr(testing, name)(), images(2, 64, seed=4).float()
    smooth = ol.smoothgrad(n=4, sigma=0.2)(ol.saliency)
    first = smooth(model, x, 1, key=3), ol.integrated_gradients(model, x, 1, steps=4)
    for _ in range(3):
        again = smooth(model, x, 1, key=3), ol.integrated_gradients(model, x, 1, steps=4)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


class Preprocessed(nn.Module):
    """A small CNN behind a preprocessing step `prepare(x, mean, std)`."""

    def __init__(self, prepare) -> None:
        super().__init__()
        self.prepare = prepare
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.net = testing.tiny_cnn(num_classes=4)

    def forward(self, x):
        return self.net(self.prepare(x, self.mean, self.std))


AFFINE = {
    "normalize": lambda x, m, s: (x - m) / s,
    "2x - 1": lambda x, m, s: 2 * x - 1,
    "torch ops": lambda x, m, s: torch.div(torch.sub(x, m), s),
    "methods": lambda x, m, s: x.sub(m).div(s).neg(),
    "constant minus": lambda x, m, s: 1.0 - x * s,
}
NONLINEAR = {
    "divides by x": lambda x, m, s: m / x,
    "squares": lambda x, m, s: x * x,
    "per-image norm": lambda x, m, s: x / x.abs().amax(dim=(1, 2, 3), keepdim=True),
    "in place": lambda x, m, s: x.clone().sub_(m),
    "clamps": lambda x, m, s: (x - m).clamp(min=0),
}


@pytest.mark.parametrize("name", [*AFFINE, *NONLINEAR])
def test_affine_preprocessing_is_part_of_the_stem(name):
    model = Preprocessed({**AFFINE, **NONLINEAR}[name]).double().eval()
    x, target = images(2, 16, seed=3) + 0.1, torch.tensor([1, 3])
    stem = find(model, x)
    assert (stem is not None) == (name in AFFINE)
    if stem is not None:
        assert stem.name == "net.features.0"
    ours = ol.integrated_gradients(model, x, target, steps=5)
    assert rel(ours, ig_loop(model, x, target, torch.zeros_like(x), 5)) < 1e-10
    smooth = ol.smoothgrad(n=3, sigma=0.1)(ol.saliency)(model, x, target, key=2)
    rng = torch.Generator().manual_seed(2)
    derive_key(rng)
    scale = 0.1 * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    noisy = [x + scale * torch.randn(x.shape[1:], generator=rng).double() for _ in range(3)]
    expected = torch.stack([input_gradient(model, v, target) for v in noisy]).mean(0)
    assert rel(smooth, expected) < 1e-10


def test_a_hook_on_an_inlined_module_turns_the_shortcut_off():
    """fx inlines a custom module, so its hooks would not run in the traced stem and tail."""
    model = nn.Sequential(Preprocessed(AFFINE["normalize"])).double().eval()
    x = images(1, 16, seed=0)
    assert find(model, x) is not None
    handle = model[0].register_forward_hook(lambda module, args, out: out * 2)
    try:
        assert find(model, x) is None
    finally:
        handle.remove()
