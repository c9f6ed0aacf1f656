"""occlens.maps: closed forms on hand-made maps, numpy references, vmap == loop, purity, errors.

Percentile references use ``np.percentile`` with its default ``method="linear"``, the rule
`occlens.maps` documents (and torch.quantile's default).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.func import vmap

import occlens as ol
from occlens import maps as M
from occlens._ops import gaussian_blur


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


GRAD = torch.tensor([[[3.0, -1.0], [0.0, 2.0]], [[-4.0, 0.5], [0.0, -2.0]]])  # [C=2, H=2, W=2]

# (id, function, shape of one map) for every public function, options included.
CASES = [
    ("abs", M.abs, (3, 5, 6)),
    ("max_channels", M.max_channels, (3, 5, 6)),
    ("sum_channels", M.sum_channels, (3, 5, 6)),
    ("l2_channels", M.l2_channels, (3, 5, 6)),
    ("mean_channels", M.mean_channels, (3, 5, 6)),
    ("normalize", M.normalize, (5, 6)),
    ("normalize-max_abs", partial(M.normalize, kind="max_abs"), (3, 5, 6)),
    ("clip", partial(M.clip, percentile=90), (5, 6)),
    ("clip-lower", partial(M.clip, percentile=80, lower=10), (3, 5, 6)),
    ("threshold", M.threshold, (5, 6)),
    ("threshold-clip", partial(M.threshold, percentile=70, below="clip"), (3, 5, 6)),
    ("upsample-bilinear", partial(M.upsample, size=(9, 11)), (3, 5, 6)),
    ("upsample-shrink", partial(M.upsample, size=3, mode="bilinear"), (5, 6)),
    ("upsample-bicubic", partial(M.upsample, size=8, mode="bicubic"), (5, 6)),
    ("upsample-nearest", partial(M.upsample, size=(7, 13), mode="nearest"), (3, 5, 6)),
    ("blur", partial(M.blur, sigma=1.5), (3, 5, 6)),
    ("recenter", partial(M.recenter, center=(1, 4), size=(3, 5)), (3, 5, 6)),
]
IDS = [case[0] for case in CASES]


# --- closed forms ------------------------------------------------------------------------------


def test_abs_and_channel_reductions_closed_form():
    g = GRAD.numpy()
    assert torch.equal(M.abs(GRAD), torch.from_numpy(np.abs(g)))
    assert torch.equal(M.max_channels(GRAD), torch.tensor([[3.0, 0.5], [0.0, 2.0]]))
    assert torch.equal(M.sum_channels(GRAD), torch.tensor([[-1.0, -0.5], [0.0, 0.0]]))
    assert torch.equal(M.mean_channels(GRAD), torch.tensor([[-0.5, -0.25], [0.0, 0.0]]))
    torch.testing.assert_close(M.l2_channels(GRAD), torch.tensor([[5.0, 1.25**0.5], [0.0, 8**0.5]]))


@pytest.mark.parametrize("name", ["max_channels", "sum_channels", "l2_channels", "mean_channels"])
def test_channel_reduction_of_a_heat_map_names_function_and_shape(name):
    with pytest.raises(ol.OcclensError, match=rf"maps\.{name}\(m\).*Tensor\[4, 5\].*already one"):
        getattr(M, name)(torch.zeros(4, 5))


def test_normalize_closed_forms():
    m = torch.tensor([[2.0, -2.0], [0.0, 6.0]])
    assert torch.equal(M.normalize(m), torch.tensor([[0.5, 0.0], [0.25, 1.0]]))
    assert torch.equal(M.normalize(m, kind="max_abs"), m / 6)
    assert torch.equal(M.normalize(GRAD, kind="max_abs"), GRAD / 4)  # over all channels at once


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
@pytest.mark.parametrize("shape", [(4, 4), (3, 4, 4)])
def test_normalize_constant_map_no_division_by_zero(value, shape):  # captum#959
    m = torch.full(shape, value)
    assert torch.equal(M.normalize(m), torch.zeros(shape))
    out = M.normalize(m, kind="max_abs")
    assert torch.isfinite(out).all()
    expected = torch.zeros(shape) if value == 0 else torch.full(shape, float(np.sign(value)))
    assert torch.equal(out, expected)
    gradient = torch.func.grad(lambda t: M.normalize(t).sum())(m)
    assert torch.isfinite(gradient).all()


def test_clip_closed_form_and_numpy_reference():
    m = torch.tensor([[0.0, 10.0, 1.0], [3.0, 2.0, 4.0]])  # sorted 0 1 2 3 4 10
    # 80th percentile: position 0.8 * 5 = 4 -> 4.0; 10th: position 0.5 -> 0.5
    assert torch.equal(M.clip(m, percentile=80), torch.tensor([[0.0, 4.0, 1.0], [3.0, 2.0, 4.0]]))
    expected = torch.tensor([[0.5, 4.0, 1.0], [3.0, 2.0, 4.0]])
    assert torch.equal(M.clip(m, percentile=80, lower=10), expected)
    r = rand(3, 7, 9)
    for hi, lo in [(99.0, None), (37.5, 2.0), (100, 0), (50, 50)]:
        top = np.percentile(r.numpy(), hi)
        bottom = -np.inf if lo is None else np.percentile(r.numpy(), lo)
        want = np.clip(r.numpy(), bottom, top)
        torch.testing.assert_close(M.clip(r, percentile=hi, lower=lo), torch.from_numpy(want))


def test_threshold_zero_closed_form():
    m = torch.tensor([[5.0, 1.0, 2.0], [4.0, 3.0, 0.0]])  # median 2.5
    assert torch.equal(M.threshold(m), torch.tensor([[5.0, 0.0, 0.0], [4.0, 3.0, 0.0]]))
    # values equal to the percentile are kept: the 40th percentile is exactly 2
    assert torch.equal(
        M.threshold(m, percentile=40), torch.tensor([[5.0, 0.0, 2.0], [4.0, 3.0, 0.0]])
    )


@pytest.mark.parametrize("percentile", [0.0, 25.0, 50.0, 90.0, 100.0])
def test_threshold_clip_is_dnnbrain_np_clip(percentile):
    r = rand(6, 8, seed=3)
    level = np.percentile(r.numpy(), percentile)
    want = np.clip(r.numpy(), level, None)  # DNNBrain's upsampling-map thresholding
    torch.testing.assert_close(
        M.threshold(r, percentile=percentile, below="clip"), torch.tensor(want)
    )
    zeroed = np.where(r.numpy() < level, 0.0, r.numpy())
    torch.testing.assert_close(M.threshold(r, percentile=percentile), torch.tensor(zeroed))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(10, 12), (3, 4), 7])
def test_upsample_matches_interpolate_and_image_resize(mode, size):
    m = rand(2, 5, 6)
    hw = (size, size) if isinstance(size, int) else size
    shrink = hw[0] < 5 or hw[1] < 6
    want = F.interpolate(m[:, None], size=hw, mode=mode, align_corners=False, antialias=shrink)
    torch.testing.assert_close(M.upsample(m, size=size, mode=mode), want[:, 0])
    assert torch.equal(
        M.upsample(m[0], size=size, mode=mode), ol.image.resize(m[0], size, mode=mode)
    )


@pytest.mark.parametrize("size", [(10, 12), (15, 18), (3, 4), (7, 5), (1, 1)])
def test_upsample_nearest_is_nearest_exact(size):
    m = rand(2, 5, 6)
    want = F.interpolate(m[:, None], size=size, mode="nearest-exact")[:, 0]
    assert torch.equal(M.upsample(m, size=size, mode="nearest"), want)
    twice = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(
        M.upsample(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), size=4, mode="nearest"), twice
    )


def test_blur_is_gaussian_blur_per_channel():
    m = rand(3, 9, 9)
    assert torch.equal(M.blur(m, sigma=1.2), gaussian_blur(m, 1.2))
    for c in range(3):
        torch.testing.assert_close(M.blur(m, sigma=1.2)[c], M.blur(m[c], sigma=1.2))
    same = M.blur(m, sigma=0)
    assert torch.equal(same, m)
    assert same is not m


def test_recenter_window_partly_outside():
    m = torch.arange(1.0, 21.0).reshape(4, 5)  # rows 1..5, 6..10, 11..15, 16..20
    out = M.recenter(m, center=(3, 4), size=(3, 4))  # rows 2..4, cols 2..5
    assert torch.equal(out, torch.tensor([[13.0, 14.0, 15.0, 0.0],
                                          [18.0, 19.0, 20.0, 0.0],
                                          [0.0, 0.0, 0.0, 0.0]]))  # fmt: skip
    far = M.recenter(m, center=(-10, 40), size=3)
    assert torch.equal(far, torch.zeros(3, 3))
    inside = M.recenter(m, center=(2, 2), size=3)
    assert torch.equal(inside, m[1:4, 1:4])
    stacked = torch.stack([m, -m])
    assert torch.equal(M.recenter(stacked, center=torch.tensor([3, 4]), size=(3, 4)),
                       torch.stack([out, -out]))  # fmt: skip


def test_recenter_even_window_follows_the_formula():
    m = rand(6, 7)
    y, x, h, w = 2, 5, 4, 6
    out = M.recenter(m, center=(y, x), size=(h, w))
    for i in range(h):
        for j in range(w):
            r, c = y - h // 2 + i, x - w // 2 + j
            want = m[r, c] if 0 <= r < 6 and 0 <= c < 7 else 0.0
            assert out[i, j] == want


# --- vmap, purity, composition -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "fn", "shape"), CASES, ids=IDS)
def test_vmap_equals_loop_and_input_untouched(name, fn, shape):
    maps = rand(4, *shape, seed=7)
    maps[2] = 1.25  # a constant map in the batch
    before = maps.clone()
    batched = vmap(fn)(maps)
    looped = torch.stack([fn(m) for m in maps])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    assert torch.equal(maps, before)
    assert torch.isfinite(batched).all()


def test_recenter_vmap_with_per_sample_centres():
    maps = rand(5, 2, 6, 7, seed=1)
    centres = torch.tensor([[0, 0], [5, 6], [3, 3], [-1, 8], [2, 6]])
    fn = partial(M.recenter, size=(3, 4))
    batched = vmap(lambda m, c: fn(m, center=c))(maps, centres)
    looped = torch.stack(
        [fn(m, center=tuple(c.tolist())) for m, c in zip(maps, centres, strict=True)]
    )
    assert torch.equal(batched, looped)


def test_functions_compose_bare_and_with_partial():
    out = GRAD
    for fn in (M.abs, M.max_channels, partial(M.clip, percentile=75), M.normalize):
        out = fn(out)
    assert out.shape == (2, 2)
    assert out.min() == 0 and out.max() == 1


# --- properties --------------------------------------------------------------------------------

maps_strategy = st.tuples(
    st.sampled_from([(), (1,), (3,)]),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1.0, 1e-3, 1e4]),
).map(lambda t: rand(*t[0], t[1], t[2], seed=t[3]) * t[4])


@given(maps_strategy)
def test_property_shapes(m):
    assert M.abs(m).shape == m.shape
    assert M.normalize(m).shape == m.shape
    assert M.clip(m, lower=1).shape == m.shape
    assert M.threshold(m, below="clip").shape == m.shape
    assert M.blur(m).shape == m.shape
    assert M.upsample(m, size=(2, 9)).shape == (*m.shape[:-2], 2, 9)
    assert M.recenter(m, center=(1, 1), size=(4, 3)).shape == (*m.shape[:-2], 4, 3)
    if m.ndim == 3:
        for reduce in (M.max_channels, M.sum_channels, M.l2_channels, M.mean_channels):
            assert reduce(m).shape == m.shape[1:]


@given(maps_strategy)
def test_property_normalize_ranges(m):
    out = M.normalize(m)
    assert out.min() >= 0 and out.max() <= 1
    signed = M.normalize(m, kind="max_abs")
    assert signed.abs().max() <= 1
    assert torch.equal(torch.sign(signed), torch.sign(m))


@given(maps_strategy)
def test_property_abs_idempotent_and_nearest_identity(m):
    assert torch.equal(M.abs(M.abs(m)), M.abs(m))
    same = M.upsample(m, size=tuple(m.shape[-2:]), mode="nearest")
    assert torch.equal(same, m)


@given(maps_strategy, st.floats(0, 100), st.floats(0, 100))
def test_property_clip_and_threshold_bounds(m, p, q):
    lo, hi = min(p, q), max(p, q)
    out = M.clip(m, percentile=hi, lower=lo)
    assert out.max() <= np.percentile(m.numpy(), hi) + 1e-9 * m.abs().max()
    kept = M.threshold(m, percentile=hi)
    assert ((kept == 0) | (kept == m)).all()


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: M.abs([[1.0]]), r"maps\.abs\(m\): expected"),
        (lambda: M.normalize(torch.zeros(2, 2, 2, 2)), r"maps\.normalize\(m\).*\[2, 2, 2, 2\]"),
        (lambda: M.normalize(torch.zeros(3, 3, dtype=torch.long)), r"floating-point"),
        (lambda: M.normalize(torch.zeros(0, 3)), r"empty"),
        (lambda: M.normalize(torch.zeros(3, 3), kind="min_max"), r"kind.*'minmax'"),
        (lambda: M.clip(torch.zeros(3, 3), percentile=101), r"maps\.clip\(percentile\)"),
        (lambda: M.clip(torch.zeros(3, 3), percentile=50, lower=60), r"maps\.clip\(lower\)"),
        (lambda: M.threshold(torch.zeros(3, 3), below="drop"), r"maps\.threshold\(below\)"),
        (lambda: M.upsample(torch.zeros(3, 3), size=0), r"maps\.upsample\(size\)"),
        (lambda: M.upsample(torch.zeros(3, 3), size=4, mode="area"), r"maps\.upsample\(mode\)"),
        (lambda: M.blur(torch.zeros(3, 3), sigma=-1), r"maps\.blur\(sigma\)"),
        (lambda: M.recenter(torch.zeros(3, 3), center=(1.5, 1), size=3), r"recenter\(center\)"),
        (lambda: M.recenter(torch.zeros(3, 3), center=torch.ones(2), size=3), r"LongTensor"),
        (lambda: M.recenter(torch.zeros(3, 3), center=(1, 1, 1), size=3), r"recenter\(center\)"),
        (lambda: M.recenter(torch.zeros(3, 3), center=(1, 1), size=(2,)), r"recenter\(size\)"),
    ],
)
def test_bad_input_raises_occlens_error(call, pattern):
    with pytest.raises(ol.OcclensError, match=pattern):
        call()
