"""Activation maximization (issue 7, part 1): `maximize` and the `reg` priors.

References: closed forms computed independently with numpy, a full-spectrum numpy FFT filter, a
2-D convolution blur, and a hand-written loop with one `torch.optim.Adam`. DNNBrain's bugs each
get a regression test: the blur mixed channels, Adam was re-created after every blur, and the
Fourier frequencies were off by one.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _state import ModelState, assert_untouched, tensor_state
from torch import nn

import occlens as ol
from occlens import reg, zoo
from occlens import targets as T
from occlens._regularizers import frequency_weights


@cache
def shapes_model() -> nn.Module:
    return zoo.shapes()


@cache
def class_means() -> torch.Tensor:
    """Mean logit of each class over real images of that class."""
    data = zoo.shapes_dataset(200, key=11)
    with torch.no_grad():
        logits = shapes_model()(data.images)
    return torch.stack([logits[data.labels == c, c].mean() for c in range(len(zoo.CLASSES))])


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- acceptance on the shipped model ------------------------------------------------------------


def test_class_logits_beat_real_images_within_default_steps():
    model = shapes_model()
    before = ModelState.of(model)
    classes = len(zoo.CLASSES)
    out = ol.maximize(model, torch.arange(classes), shape=(classes, 3, 64, 64), key=0)
    assert out.image.shape == (classes, 3, 64, 64)
    assert out.scores.shape == (128, classes)  # the default steps
    assert bool((out.score > class_means()).all()), (out.score, class_means())
    assert bool((out.scores[0] < class_means()).all())  # noise starts below the real images
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    with torch.no_grad():  # the reported final score is the model's score of the image
        torch.testing.assert_close(model(out.image)[range(classes), range(classes)], out.score)
    assert_untouched(model, before)


def test_fourier_parameterization_beats_real_images():
    model = shapes_model()
    out = ol.maximize(model, 2, shape=(3, 64, 64), parameterization="fourier", key=1)
    assert out.image.shape == (3, 64, 64) and out.scores.shape == (128,)
    assert float(out.score) > float(class_means()[2])
    assert float(out.image.min()) > 0.0 and float(out.image.max()) < 1.0  # sigmoid range


def test_single_image_with_regularizers_and_priors():
    model = shapes_model()
    out = ol.maximize(
        model,
        T.logit(4),
        shape=(3, 64, 64),
        regularizers=[reg.tv(1e-3), reg.l2(1e-2, center=0.5)],
        precondition=reg.blur(0.5, every=4),
        gradient_filter=reg.fourier(0.25),
        key=2,
    )
    assert out.score.shape == () and out.scores.shape == (128,)
    assert float(out.score) > float(class_means()[4])


def test_unit_and_channel_at_a_layer():
    model = shapes_model()
    before = ModelState.of(model)
    for target in (T.channel(5), T.unit(7, 3, 4), T.peak(2)):
        out = ol.maximize(model, target, shape=(3, 64, 64), layer="features.7", steps=24, key=3)
        assert float(out.score) > float(out.scores[0]) + 1.0, target
    # the same as maximizing on the truncated model
    a = ol.maximize(model, T.unit(7, 3, 4), shape=(3, 64, 64), layer="features.7", steps=5, key=3)
    b = ol.maximize(
        ol.layer(model, "features.7"), T.unit(7, 3, 4), shape=(3, 64, 64), steps=5, key=3
    )
    assert torch.equal(a.image, b.image)
    assert_untouched(model, before)


# --- closed forms of the priors -----------------------------------------------------------------


def test_regularizer_values_equal_closed_forms():
    x = torch.randn(2, 3, 5, 7, generator=rng(4), dtype=torch.float64)
    a = x.numpy()
    l1 = np.array([sum(abs(v - 0.25) for v in image.ravel()) for image in a])
    l2 = np.array([math.sqrt(sum(v * v for v in image.ravel())) for image in a])
    tv = np.zeros(2)
    for b, c, h, w in np.ndindex(*a.shape):
        if h + 1 < a.shape[2]:
            tv[b] += abs(a[b, c, h + 1, w] - a[b, c, h, w])
        if w + 1 < a.shape[3]:
            tv[b] += abs(a[b, c, h, w + 1] - a[b, c, h, w])
    np.testing.assert_allclose(reg.l1(0.3, center=0.25)(x).numpy(), 0.3 * l1, rtol=1e-12)
    np.testing.assert_allclose(reg.l2(2.0)(x).numpy(), 2.0 * l2, rtol=1e-12)
    np.testing.assert_allclose(reg.tv(0.5)(x).numpy(), 0.5 * tv, rtol=1e-12)
    np.testing.assert_allclose(reg.tv(0.5).value(x[0]).numpy(), tv[0], rtol=1e-12)
    assert reg.l2()(torch.zeros(1, 2, 2)).item() == 0.0


def test_l2_has_a_finite_gradient_at_zero():
    x = torch.zeros(1, 2, 2, requires_grad=True)
    (g,) = torch.autograd.grad(reg.l2()(x), x)
    assert torch.equal(g, torch.zeros_like(x))


def numpy_fourier(g: np.ndarray, factor: float) -> np.ndarray:
    """The filter on the full spectrum, frequencies in cycles per image from numpy."""
    h, w = g.shape[-2:]
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.fftfreq(w) * w
    t = 1.0 / np.maximum(1.0, (fy[:, None] ** 2 + fx[None, :] ** 2) ** factor)
    t = t / t.mean()
    return np.real(np.fft.ifft2(np.fft.fft2(g) * t))


@pytest.mark.parametrize(("h", "w"), [(8, 8), (7, 10), (9, 5)])
@pytest.mark.parametrize("factor", [0.25, 0.5, 1.3])
def test_fourier_filter_matches_full_spectrum_reference(h, w, factor):
    g = torch.randn(2, 3, h, w, generator=rng(5), dtype=torch.float64)
    out = reg.fourier(factor)(g)
    np.testing.assert_allclose(out.numpy(), numpy_fourier(g.numpy(), factor), atol=1e-12)


def test_fourier_filter_factor_zero_is_identity():
    g = torch.randn(3, 9, 6, generator=rng(6))
    assert torch.equal(reg.fourier(0.0)(g), g)
    assert torch.equal(reg.fourier(0)(g), g)
    # the FFT path itself with all-ones weights gives the input back
    weights = frequency_weights(9, 6, 0.0, torch.float64, torch.device("cpu"))
    assert torch.equal(weights, torch.ones(9, 4, dtype=torch.float64))
    g64 = g.double()
    back = torch.fft.irfft2(torch.fft.rfft2(g64) * weights, s=(9, 6))
    torch.testing.assert_close(back, g64, rtol=0, atol=1e-12)
    # and maximize with factor 0 equals maximize without a filter
    model = shapes_model()
    a = ol.maximize(model, 1, shape=(3, 64, 64), steps=4, gradient_filter=0.0, key=0)
    b = ol.maximize(model, 1, shape=(3, 64, 64), steps=4, key=0)
    assert torch.equal(a.image, b.image)


def test_fourier_frequencies_are_not_off_by_one():
    # Row frequencies 0, 1, 2, 3, 4, -3, -2, -1 for n = 8; DNNBrain used min(k, 7 - k).
    w = frequency_weights(8, 8, 0.5, torch.float64, torch.device("cpu"))
    mean = (
        1.0 / np.maximum(1.0, np.hypot(*np.meshgrid(np.r_[0:5, -3:0], np.r_[0:5, -3:0])))
    ).mean()
    np.testing.assert_allclose(w[:, 0].numpy() * mean, [1, 1, 1 / 2, 1 / 3, 1 / 4, 1 / 3, 1 / 2, 1])
    np.testing.assert_allclose(w[0].numpy() * mean, [1, 1, 1 / 2, 1 / 3, 1 / 4])


def test_blur_is_depthwise_gaussian():
    image = torch.rand(3, 12, 12, generator=rng(7), dtype=torch.float64)
    sigma = 1.2
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g1 = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.outer(g1, g1) / g1.sum() ** 2
    expected = torch.stack(
        [
            F.conv2d(F.pad(c[None, None], [radius] * 4, mode="replicate"), kernel[None, None])[0, 0]
            for c in image
        ]
    )
    torch.testing.assert_close(reg.blur(sigma)(image), expected)
    # no mixing: a single lit channel stays alone
    lit = torch.zeros(3, 9, 9)
    lit[1, 4, 4] = 1.0
    out = reg.blur(1.0)(lit)
    assert float(out[0].abs().max()) == 0.0 and float(out[2].abs().max()) == 0.0


# --- the optimisation loop ----------------------------------------------------------------------

GOAL = torch.rand(1, 2, 10, 12, generator=rng(8))


def quadratic(x: torch.Tensor) -> torch.Tensor:
    """A model whose gradient depends on the image, so Adam's moments matter: -|x - goal|^2."""
    return -((x - GOAL) ** 2).sum(dim=(1, 2, 3))[:, None] + 0.0 * x.mean()


def manual_loop(init, *, steps, lr, sigma, every, factor, weights, reset):
    """A plain reference loop; `reset=True` re-creates Adam after each blur (DNNBrain's bug)."""
    x = init.clone()[None].requires_grad_()
    optimizer = torch.optim.Adam([x], lr=lr)
    for step in range(steps):
        loss = -quadratic(x).sum() + weights[0] * x.abs().sum()
        loss = loss + weights[1] * (
            (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., 1:] - x[..., :-1]).abs().sum()
        )
        optimizer.zero_grad()
        loss.backward()
        x.grad = torch.from_numpy(numpy_fourier(x.grad.double().numpy(), factor)).float()
        optimizer.step()
        with torch.no_grad():
            if (step + 1) % every == 0:
                x.copy_(reg.blur(sigma)(x))
                if reset:
                    optimizer = torch.optim.Adam([x], lr=lr)
            x.clamp_(0.0, 1.0)
    return x.detach()[0]


def test_matches_a_manual_loop_with_one_optimizer():
    init = torch.rand(2, 10, 12, generator=rng(9))
    options = {"steps": 12, "lr": 0.05, "sigma": 0.8, "every": 3, "factor": 0.3}
    out = ol.maximize(
        quadratic,
        0,
        init=init,
        steps=options["steps"],
        lr=options["lr"],
        regularizers=[reg.l1(1e-2), reg.tv(2e-2)],
        precondition=reg.blur(options["sigma"], every=options["every"]),
        gradient_filter=reg.fourier(options["factor"]),
    )
    kept = manual_loop(init, weights=(1e-2, 2e-2), reset=False, **options)
    reset = manual_loop(init, weights=(1e-2, 2e-2), reset=True, **options)
    torch.testing.assert_close(out.image, kept, rtol=0, atol=1e-5)
    assert float((out.image - reset).abs().max()) > 1e-3  # resetting Adam would show
    # scores: the model's score before each step
    assert out.scores.shape == (12,)
    assert float(out.scores[0]) == pytest.approx(float(quadratic(init[None])[0, 0]), rel=1e-6)


def test_blur_keeps_adam_state(monkeypatch):
    made: list[torch.optim.Adam] = []

    class Recording(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    init = torch.rand(2, 10, 12, generator=rng(10))
    ol.maximize(quadratic, 0, init=init, steps=7, precondition=reg.blur(1.0, every=2))
    assert len(made) == 1  # created once, never re-created after a blur
    (state,) = made[0].state.values()
    assert int(state["step"]) == 7  # the step count ran on across three blurs
    assert float(state["exp_avg"].abs().sum()) > 0


def test_blur_in_maximize_never_mixes_channels():
    # The score reads channel 0 only; DNNBrain's blur over (C, H, W) leaked it into 1 and 2.
    init = torch.stack(
        [torch.rand(9, 9, generator=rng(14)), torch.full((9, 9), 0.5), torch.zeros(9, 9)]
    )
    out = ol.maximize(
        lambda x: (x[:, 0] ** 2).sum(dim=(1, 2))[:, None],
        0,
        init=init,
        steps=6,
        precondition=reg.blur(1.5),
    )
    assert torch.equal(out.image[1:], init[1:])
    assert not torch.equal(out.image[0], init[0])


def test_custom_regularizer_equals_builtin():
    model = shapes_model()
    custom = ol.maximize(
        model,
        1,
        shape=(2, 3, 64, 64),
        steps=5,
        regularizers=[lambda x: 0.01 * x.abs().sum(dim=(1, 2, 3))],
        key=7,
    )
    builtin = ol.maximize(
        model, 1, shape=(2, 3, 64, 64), steps=5, regularizers=[reg.l1(0.01)], key=7
    )
    torch.testing.assert_close(custom.image, builtin.image)


def test_value_range_and_none():
    init = torch.full((2, 10, 12), 0.5)
    out = ol.maximize(lambda x: x.sum(dim=(1, 2, 3))[:, None], 0, init=init, steps=30, lr=0.1)
    assert float(out.image.max()) == 1.0  # pushed up to the top of the range, no further
    free = ol.maximize(
        lambda x: x.sum(dim=(1, 2, 3))[:, None], 0, init=init, steps=30, lr=0.1, value_range=None
    )
    assert float(free.image.min()) > 1.0
    shifted = ol.maximize(
        lambda x: -x.sum(dim=(1, 2, 3))[:, None], 0, shape=(2, 4, 4), value_range=(-2, 3), key=0
    )
    assert float(shifted.image.min()) == -2.0


def test_normalize_is_applied_before_the_model():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = shapes_model()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    a = ol.maximize(model, 3, shape=(3, 64, 64), steps=6, normalize=(mean, std), key=4)
    b = ol.maximize(lambda x: model((x - m) / s), 3, shape=(3, 64, 64), steps=6, key=4)
    torch.testing.assert_close(a.image, b.image)
    torch.testing.assert_close(a.scores, b.scores)
    assert float(a.image.min()) >= 0.0 and float(a.image.max()) <= 1.0  # pixel space


def test_fourier_init_round_trips_and_steps_zero():
    data = zoo.samples()
    image = data.images[0].clamp(0.01, 0.99)
    for parameterization in ("pixel", "fourier"):
        out = ol.maximize(shapes_model(), 0, init=image, steps=0, parameterization=parameterization)
        torch.testing.assert_close(out.image, image, rtol=0, atol=1e-5)
        assert out.scores.shape == (0,)
        with torch.no_grad():
            torch.testing.assert_close(
                out.score, shapes_model()(image[None])[0, 0], atol=1e-3, rtol=0
            )
    gray = ol.maximize(
        shapes_model(),
        0,
        init=torch.full((3, 8, 8), 0.5),
        parameterization="fourier",
        steps=0,
        decorrelate=False,
    )
    torch.testing.assert_close(gray.image, torch.full((3, 8, 8), 0.5))


def test_init_is_not_modified_and_needs_no_key():
    init = torch.rand(3, 64, 64, generator=rng(12)).requires_grad_()
    before = tensor_state(init)
    out = ol.maximize(shapes_model(), 1, init=init.detach(), steps=3)
    ol.maximize(shapes_model(), 1, init=init, steps=3)
    assert tensor_state(init) == before
    assert not out.image.requires_grad and out.image.grad_fn is None


def test_jitter_moves_the_gradient_and_needs_a_key():
    def corner(x):  # the score reads one pixel: without jitter only that pixel changes
        return x[:, :1, 0, 0]

    init = torch.full((1, 6, 6), 0.5)
    still = ol.maximize(corner, 0, init=init, steps=20, lr=0.01)
    assert int((still.image != 0.5).sum()) == 1
    moved = ol.maximize(corner, 0, init=init, steps=20, lr=0.01, jitter=1, key=0)
    changed = (moved.image[0] != 0.5).nonzero().tolist()
    assert len(changed) > 1
    # every changed pixel lies within one (wrapped) pixel of the corner
    assert all(min(y, 6 - y) <= 1 and min(x, 6 - x) <= 1 for y, x in changed)
    again = ol.maximize(corner, 0, init=init, steps=20, lr=0.01, jitter=1, key=0)
    assert torch.equal(moved.image, again.image)
    with pytest.raises(ol.OcclensError, match=r"maximize\(key\): jitter needs random numbers"):
        ol.maximize(corner, 0, init=init, steps=2, jitter=1)


def test_fourier_with_jitter_beats_real_images():
    out = ol.maximize(
        shapes_model(), 4, shape=(3, 64, 64), parameterization="fourier", jitter=2, key=0
    )
    assert float(out.score) > float(class_means()[4])


def test_progress_reports_to_stderr(capsys):
    ol.maximize(lambda x: x.mean((2, 3)), 0, shape=(1, 4, 4), steps=3, progress=True, key=0)
    assert "maximize" in capsys.readouterr().err
    ol.maximize(lambda x: x.mean((2, 3)), 0, shape=(1, 4, 4), steps=3, progress=False, key=0)
    assert capsys.readouterr().err == ""


# --- randomness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_same_key_same_result_different_key_different(parameterization):
    model = shapes_model()

    def run(key):
        return ol.maximize(
            model, 0, shape=(3, 64, 64), steps=5, parameterization=parameterization, key=key
        )

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.image, b.image) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.score, b.score)
    assert not torch.equal(a.image, c.image)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    d = run(g)
    assert torch.equal(g.get_state(), state)  # the caller's generator is not advanced
    assert torch.equal(d.image, a.image)  # a generator seeded 5 is the key 5


def test_no_global_rng_is_used():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ol.maximize(shapes_model(), 0, shape=(3, 64, 64), steps=2, key=0)
    assert torch.equal(torch.get_rng_state(), state)


# --- the model is never changed -----------------------------------------------------------------


def test_model_untouched_with_grads_and_frozen_parameters():
    model = zoo.shapes()
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    model.features[0].weight.requires_grad_(False)
    before = ModelState.of(model)
    grad_before = model.classifier.weight.grad.clone()
    with torch.no_grad():  # works inside no_grad too
        out = ol.maximize(model, 0, shape=(2, 3, 64, 64), steps=3, key=0)
    assert out.image.shape == (2, 3, 64, 64)
    ol.maximize(model, T.channel(1), layer="features.4", shape=(3, 64, 64), steps=2, key=0)
    assert_untouched(model, before)
    assert torch.equal(model.classifier.weight.grad, grad_before)
    assert model.features[1].__class__ is nn.ReLU


def test_model_untouched_when_the_call_raises():
    model = zoo.shapes()
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=r"maximize\(target\)"):
        ol.maximize(model, 9, shape=(3, 64, 64), steps=2, key=0)
    with pytest.raises(ol.OcclensError, match=r"maximize\(model_fn\)"):
        ol.maximize(model, 0, shape=(1, 64, 64), steps=2, key=0)
    assert_untouched(model, before)


def test_dtype_follows_the_model():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)).double()
    model(torch.zeros(1, 3, 6, 6, dtype=torch.float64))
    out = ol.maximize(model, 1, shape=(3, 6, 6), steps=2, key=0)
    assert out.image.dtype == torch.float64
    fourier = ol.maximize(model, 1, shape=(3, 6, 6), steps=2, parameterization="fourier", key=0)
    assert fourier.image.dtype == torch.float64
    # a module without parameters takes any floating dtype
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    init = torch.rand(3, 6, 6, dtype=torch.float64, generator=rng(13))
    assert ol.maximize(pooled, 2, init=init, steps=2).image.dtype == torch.float64


# --- bad input ----------------------------------------------------------------------------------

M = shapes_model
S = (3, 64, 64)
BAD = [
    ("no start", lambda: ol.maximize(M(), 0, key=0), r"maximize\(shape\).*neither init nor shape"),
    (
        "both starts",
        lambda: ol.maximize(M(), 0, init=torch.rand(S), shape=S),
        r"maximize\(shape\).*both",
    ),
    ("no key", lambda: ol.maximize(M(), 0, shape=S), r"maximize\(key\).*key=0"),
    ("bad key", lambda: ol.maximize(M(), 0, shape=S, key=1.5), r"maximize\(key\)"),
    ("shape rank", lambda: ol.maximize(M(), 0, shape=(64, 64), key=0), r"maximize\(shape\)"),
    ("shape zero", lambda: ol.maximize(M(), 0, shape=(3, 0, 64), key=0), r"maximize\(shape\)"),
    ("init rank", lambda: ol.maximize(M(), 0, init=torch.rand(64, 64)), r"maximize\(init\)"),
    (
        "init int",
        lambda: ol.maximize(M(), 0, init=torch.zeros(S, dtype=torch.uint8)),
        r"maximize\(init\).*floating",
    ),
    (
        "init out of range",
        lambda: ol.maximize(M(), 0, init=torch.full(S, 2.0)),
        r"maximize\(init\).*outside value_range",
    ),
    ("not a model", lambda: ol.maximize("net", 0, shape=S, key=0), r"maximize\(model_fn\)"),
    ("class too big", lambda: ol.maximize(M(), 7, shape=S, key=0), r"maximize\(target\).*0\.\.4"),
    (
        "unit on logits",
        lambda: ol.maximize(M(), T.unit(0, 1, 1), shape=S, key=0),
        r"maximize\(target\).*\[B, C, H, W\]",
    ),
    ("target string", lambda: ol.maximize(M(), "cat", shape=S, key=0), r"maximize\(target\)"),
    ("steps negative", lambda: ol.maximize(M(), 0, shape=S, steps=-1, key=0), r"maximize\(steps\)"),
    ("steps float", lambda: ol.maximize(M(), 0, shape=S, steps=2.0, key=0), r"maximize\(steps\)"),
    ("lr zero", lambda: ol.maximize(M(), 0, shape=S, lr=0, key=0), r"maximize\(lr\)"),
    ("lr nan", lambda: ol.maximize(M(), 0, shape=S, lr=math.nan, key=0), r"maximize\(lr\)"),
    (
        "regularizer not callable",
        lambda: ol.maximize(M(), 0, shape=S, regularizers=[1.0], key=0),
        r"maximize\(regularizers\).*not a regularizer",
    ),
    (
        "regularizers string",
        lambda: ol.maximize(M(), 0, shape=S, regularizers="tv", key=0),
        r"maximize\(regularizers\)",
    ),
    (
        "regularizer wrong shape",
        lambda: ol.maximize(M(), 0, shape=S, regularizers=[lambda x: x], key=0),
        r"maximize\(regularizers\).*one penalty per image",
    ),
    (
        "precondition negative",
        lambda: ol.maximize(M(), 0, shape=S, precondition=-1.0, key=0),
        r"maximize\(precondition\)",
    ),
    (
        "precondition string",
        lambda: ol.maximize(M(), 0, shape=S, precondition="GB", key=0),
        r"maximize\(precondition\).*reg\.blur",
    ),
    (
        "filter negative",
        lambda: ol.maximize(M(), 0, shape=S, gradient_filter=-0.5, key=0),
        r"maximize\(gradient_filter\)",
    ),
    (
        "filter string",
        lambda: ol.maximize(M(), 0, shape=S, gradient_filter="Fourier", key=0),
        r"maximize\(gradient_filter\)",
    ),
    (
        "filter wrong shape",
        lambda: ol.maximize(M(), 0, shape=S, gradient_filter=lambda g: g[0], key=0),
        r"maximize\(gradient_filter\).*shape",
    ),
    (
        "blur with fourier",
        lambda: ol.maximize(M(), 0, shape=S, parameterization="fourier", precondition=1.0, key=0),
        r"maximize\(precondition\).*'pixel'",
    ),
    (
        "filter with fourier",
        lambda: ol.maximize(
            M(), 0, shape=S, parameterization="fourier", gradient_filter=0.3, key=0
        ),
        r"maximize\(gradient_filter\).*'pixel'",
    ),
    (
        "parameterization",
        lambda: ol.maximize(M(), 0, shape=S, parameterization="fft", key=0),
        r"maximize\(parameterization\).*'fourier'",
    ),
    (
        "decorrelate pixel",
        lambda: ol.maximize(M(), 0, shape=S, decorrelate=True, key=0),
        r"maximize\(decorrelate\).*'fourier'",
    ),
    (
        "decorrelate 1 channel",
        lambda: ol.maximize(
            lambda x: x.mean((2, 3)),
            0,
            shape=(1, 4, 4),
            parameterization="fourier",
            decorrelate=True,
            key=0,
        ),
        r"maximize\(decorrelate\).*3 \(RGB\)",
    ),
    (
        "value_range reversed",
        lambda: ol.maximize(M(), 0, shape=S, value_range=(1, 0), key=0),
        r"maximize\(value_range\)",
    ),
    (
        "value_range scalar",
        lambda: ol.maximize(M(), 0, shape=S, value_range=1.0, key=0),
        r"maximize\(value_range\)",
    ),
    (
        "normalize channels",
        lambda: ol.maximize(M(), 0, shape=S, normalize=((0.5, 0.5), (0.2, 0.2)), key=0),
        r"maximize\(normalize\).*one finite value per channel \(3\)",
    ),
    (
        "normalize std zero",
        lambda: ol.maximize(M(), 0, shape=S, normalize=(0.5, 0.0), key=0),
        r"maximize\(normalize\).*not positive",
    ),
    (
        "normalize form",
        lambda: ol.maximize(M(), 0, shape=S, normalize="imagenet", key=0),
        r"maximize\(normalize\)",
    ),
    (
        "layer unknown",
        lambda: ol.maximize(M(), T.channel(0), layer="conv9", shape=S, key=0),
        r"maximize\(layer='conv9'\).*close matches",
    ),
    (
        "layer on a function",
        lambda: ol.maximize(lambda x: M()(x), 0, layer="features.0", shape=S, key=0),
        r"maximize\(layer\).*nn\.Module",
    ),
    (
        "jitter negative",
        lambda: ol.maximize(M(), 0, shape=S, jitter=-1, key=0),
        r"maximize\(jitter\)",
    ),
    (
        "jitter float",
        lambda: ol.maximize(M(), 0, shape=S, jitter=1.5, key=0),
        r"maximize\(jitter\)",
    ),
    (
        "progress",
        lambda: ol.maximize(M(), 0, shape=S, progress="yes", key=0),
        r"maximize\(progress\)",
    ),
    (
        "dtype mismatch",
        lambda: ol.maximize(M(), 0, init=torch.rand(S, dtype=torch.float64)),
        r"maximize\(init\).*float64.*float32",
    ),
    ("reg weight negative", lambda: reg.l1(-1.0), r"reg\.l1\(weight\).*>= 0"),
    ("reg weight string", lambda: reg.tv("big"), r"reg\.tv\(weight\)"),
    ("reg center nan", lambda: reg.l2(1.0, center=math.nan), r"reg\.l2\(center\)"),
    ("blur sigma zero", lambda: reg.blur(0.0), r"reg\.blur\(sigma\).*> 0"),
    ("blur every zero", lambda: reg.blur(1.0, every=0), r"reg\.blur\(every\)"),
    ("fourier negative", lambda: reg.fourier(-1.0), r"reg\.fourier\(factor\)"),
    ("regularizer on a vector", lambda: reg.l1()(torch.ones(3)), r"reg\.l1\(image\)"),
]


@pytest.mark.parametrize(("name", "call", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_occlens_error(name, call, match):
    model = shapes_model()
    before = ModelState.of(model)
    with pytest.raises(ol.OcclensError, match=match):
        call()
    assert_untouched(model, before)


def test_model_error_names_the_call():
    def broken(x):
        raise RuntimeError("boom")

    with pytest.raises(ol.OcclensError, match=r"maximize\(model_fn\).*boom"):
        ol.maximize(broken, 0, shape=S, key=0)
