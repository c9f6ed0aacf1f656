"""occlusion(): parity with Captum, each reference tool's definition, loops, keys and chunking."""

from __future__ import annotations

import warnings

import pytest
import torch
from _reference import (
    captum_positions,
    center_map,
    constant_fill,
    deltas_loop,
    fitting_positions,
    grid_windows,
    image_fill,
    mean_map,
    noise_fill,
    rf_script_params,
    sum_map,
)
from _state import ModelState, assert_untouched, tensor_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens import targets as T
from occlens import testing


def convnet(seed: int = 0, dtype=torch.float64, classes: int = 5) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(72, classes),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.to(dtype).eval()


def image(seed: int = 1, size=(3, 12, 14), dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def captum_occlusion(model, x, target, window, stride, ppe=1):
    from captum.attr import Occlusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = Occlusion(model).attribute(
            x[None],
            sliding_window_shapes=(x.shape[0], *window),
            strides=(1, *stride),
            target=target,
            baselines=torch.zeros_like(x[None]),
            perturbations_per_eval=ppe,
        )
    return attr[0, 0].double()


@given(
    seed=st.integers(0, 2**16),
    height=st.integers(5, 16),
    width=st.integers(5, 16),
    data=st.data(),
)
def test_mean_cover_zero_equals_captum_occlusion(seed, height, width, data):
    window = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, window[0])), data.draw(st.integers(1, window[1])))
    target = data.draw(st.integers(0, 4))
    model, x = convnet(seed), image(seed + 1, (3, height, width))
    ours = ol.occlusion(
        model, x, target, window=window, stride=stride, edge="cover", aggregate="mean"
    )
    theirs = captum_occlusion(model, x, target, window, stride, ppe=data.draw(st.integers(1, 9)))
    scale = theirs.abs().max().clamp(min=1e-6)
    assert ((ours - theirs).abs().max() / scale) <= 1e-5


def test_captum_parity_in_float32_with_a_batch():
    model, xs = convnet(3, torch.float32), image(4, (2, 3, 11, 13), torch.float32)
    ours = ol.occlusion(model, xs, torch.tensor([1, 3]), window=(4, 3), stride=(2, 2), edge="cover")
    from captum.attr import Occlusion

    theirs = Occlusion(model).attribute(
        xs,
        sliding_window_shapes=(3, 4, 3),
        strides=(1, 2, 2),
        target=torch.tensor([1, 3]),
        perturbations_per_eval=16,
    )[:, 0]
    assert ((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-5


FILLS = ["zero", "number", "channel", "mean", "blur", "baseline"]


def _fill_case(name: str, x: torch.Tensor):
    """(fill argument for occlens, fill function for the loop reference)."""
    if name == "zero":
        return 0.0, constant_fill(0.0)
    if name == "number":
        return 0.25, constant_fill(0.25)
    if name == "channel":
        value = torch.tensor([0.5, -1.0, 2.0], dtype=x.dtype)
        return value, constant_fill(value.view(3, 1, 1))
    if name == "mean":
        return "mean", constant_fill(x.mean(dim=(1, 2)).view(3, 1, 1))
    if name == "blur":
        from occlens._ops import gaussian_blur

        return ol.fills.blur(1.5), image_fill(gaussian_blur(x[None], 1.5)[0])
    baseline = image(99, tuple(x.shape))
    return baseline, image_fill(baseline)


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("edge", ["fit", "cover"])
@pytest.mark.parametrize("how", ["mean", "sum", "grid", "center"])
def test_vectorised_equals_loop(fill, edge, how):
    model, x = convnet(5), image(6, (3, 13, 11))
    window, stride = (4, 3), (3, 2)
    positions = captum_positions if edge == "cover" else fitting_positions
    rows, cols = positions(13, 4, 3), positions(11, 3, 2)
    windows = grid_windows(rows, cols)
    fill_arg, fill_ref = _fill_case(fill, x)
    deltas = deltas_loop(model, x, T.logit(2), windows, fill_ref)
    expected = {
        "mean": lambda: mean_map(13, 11, windows, deltas),
        "sum": lambda: sum_map(13, 11, windows, deltas),
        "center": lambda: center_map(13, 11, windows, deltas),
        "grid": lambda: torch.tensor(deltas, dtype=torch.float64).view(len(rows), len(cols)),
    }[how]()
    ours = ol.occlusion(
        model, x, 2, window=window, stride=stride, fill=fill_arg, edge=edge, aggregate=how
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)


def test_xplique_sum_fit_definition():
    """xplique: fitting patches only, map = sum over covering patches of (base - occluded)."""
    model, x = convnet(7), image(8, (3, 10, 10))
    windows = grid_windows(fitting_positions(10, 3, 3), fitting_positions(10, 3, 3))
    deltas = deltas_loop(model, x, T.logit(0), windows, constant_fill(0.5))
    expected = sum_map(10, 10, windows, deltas)
    ours = ol.occlusion(model, x, 0, window=3, stride=3, fill=0.5, edge="fit", aggregate="sum")
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    assert torch.all(ours[9, :] == 0) and torch.all(ours[:, 9] == 0)  # never covered


def test_dnnbrain_grid_definition():
    """DNNBrain: n = floor((H - h) / s) + 1 fitting positions, D = act(orig) - act(occluded)."""
    model, x = convnet(9), image(10, (3, 16, 13))
    black = -torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    conv = ol.layer(model, "3")
    target = T.channel(4, reduce="max")
    ours = ol.occlusion(conv, x, target, window=(5, 3), stride=(2, 2), fill=black, aggregate="grid")
    n_rows, n_cols = (16 - 5) // 2 + 1, (13 - 3) // 2 + 1
    assert ours.shape == (n_rows, n_cols)
    expected = torch.empty(n_rows, n_cols, dtype=torch.float64)
    with torch.no_grad():
        orig = conv(x[None])[0, 4].max()
        for i in range(n_rows):
            for j in range(n_cols):
                occluded = x.clone()
                occluded[:, 2 * i : 2 * i + 5, 2 * j : 2 * j + 3] = black.view(3, 1, 1)
                expected[i, j] = orig - conv(occluded[None])[0, 4].max()
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)


def test_rf_mapping_script_center_box_uniform():
    """The RF-mapping script: U[-1, 1) occluders in the unit's box, |delta| at occluder centres."""
    model, x = convnet(11), image(12, (3, 20, 20))
    conv = ol.layer(model, "3")
    rf_size, box_inclusive = 14, (3, 5, 16, 18)
    params = rf_script_params(box_inclusive, rf_size, (20, 20))
    windows = [
        (p["top_left"][0], p["top_left"][1], p["bottom_right"][0] + 1, p["bottom_right"][1] + 1)
        for p in params
    ]
    window, stride = ol.occluder_for_rf(rf_size)
    target = T.unit(2, 4, 5)
    fill = noise_fill(7, 3, (window, window), -1.0, 1.0, x.dtype)
    deltas = [
        abs(d) for d in deltas_loop(model.__class__(*list(model)[:4]), x, target, windows, fill)
    ]
    expected = center_map(20, 20, windows, deltas)
    y0, x0, y1, x1 = box_inclusive
    ours = ol.occlusion(
        conv,
        x,
        target,
        window=window,
        stride=stride,
        box=(y0, x0, y1 + 1, x1 + 1),
        fill=ol.fills.uniform(-1, 1),
        aggregate="center",
        absolute=True,
        key=7,
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    assert int((ours != 0).sum()) <= len(windows)


def test_callable_fill_gets_image_mask_and_generator():
    model, x = convnet(13), image(14, (3, 9, 9))
    seen = []

    def shuffle(img, mask, gen):
        seen.append((mask.dtype, tuple(mask.shape), gen is not None))
        noise = torch.rand(img.shape, generator=gen, dtype=img.dtype)
        return torch.where(mask, noise, img)

    windows = grid_windows(fitting_positions(9, 3, 2), fitting_positions(9, 3, 2))
    gen = torch.Generator().manual_seed(3)

    def reference_fill(p, y0, x0, y1, x1):
        return torch.rand(x.shape, generator=gen, dtype=x.dtype)[:, y0:y1, x0:x1]

    expected = mean_map(9, 9, windows, deltas_loop(model, x, T.logit(1), windows, reference_fill))
    ours = ol.occlusion(model, x, 1, window=3, stride=2, fill=shuffle, key=3, chunk_size=5)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    assert seen[0] == (torch.bool, (9, 9), True) and len(seen) == len(windows)


def test_batch_with_per_image_targets_equals_single_calls():
    model, xs = convnet(15), image(16, (3, 3, 10, 12))
    labels = torch.tensor([4, 0, 2])
    fill = ol.fills.uniform(-2, 2)
    batch = ol.occlusion(model, xs, labels, window=3, stride=2, fill=fill, key=5, edge="cover")
    assert batch.shape == (3, 10, 12)
    for i in range(3):
        one = ol.occlusion(
            model, xs[i], int(labels[i]), window=3, stride=2, fill=fill, key=5, edge="cover"
        )
        torch.testing.assert_close(batch[i], one, rtol=0, atol=0)


@given(chunk=st.integers(2, 80), seed=st.integers(0, 1000))
def test_chunked_equals_unchunked_bit_for_bit(chunk, seed):
    model, x = convnet(seed, torch.float32), image(seed, (3, 12, 12), torch.float32)
    kwargs = dict(window=3, stride=1, fill=ol.fills.uniform(), key=seed, aggregate="grid")
    whole = ol.occlusion(model, x, 1, chunk_size=200, **kwargs)
    assert torch.equal(ol.occlusion(model, x, 1, chunk_size=chunk, **kwargs), whole)
    assert torch.equal(ol.occlusion(model, x, 1, **kwargs), whole)  # the automatic chunk size


def test_single_image_calls_agree_to_float_rounding():
    """chunk_size=1 runs batch-1 kernels, which round differently on the CPU; the noise is the same."""
    model, x = convnet(2, torch.float32), image(2, (3, 12, 12), torch.float32)
    kwargs = dict(window=3, stride=1, fill=ol.fills.uniform(), key=2, aggregate="grid")
    ones = ol.occlusion(model, x, 1, chunk_size=1, **kwargs)
    batched = ol.occlusion(model, x, 1, **kwargs)
    assert (ones - batched).abs().max() <= 1e-5 * batched.abs().max()
    double = ol.occlusion(model.double(), x.double(), 1, chunk_size=1, **kwargs)
    torch.testing.assert_close(
        double, ol.occlusion(model, x.double(), 1, **kwargs), rtol=1e-12, atol=1e-12
    )


def test_keys_determinism_and_generators_are_not_advanced():
    model, x = convnet(17), image(18, (3, 10, 10))

    def run(key):
        return ol.occlusion(model, x, 0, window=3, stride=2, fill=ol.fills.uniform(), key=key)

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))
    gen = torch.Generator().manual_seed(4)
    state = gen.get_state().clone()
    assert torch.equal(run(gen), run(gen)) and torch.equal(gen.get_state(), state)
    assert torch.equal(run(gen), run(4))  # a generator seeded 4 is the key 4
    with pytest.raises(ol.OcclensError, match=r"occlusion\(key\).*needs random numbers"):
        ol.occlusion(model, x, 0, window=3, fill=ol.fills.uniform())


def test_global_rng_state_is_never_used():
    model, x = convnet(19), image(20, (3, 8, 8))
    before = torch.get_rng_state().clone()
    ol.occlusion(model, x, 0, window=2, fill=ol.fills.uniform(), key=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_peak_target_is_resolved_on_the_clean_image():
    model, x = convnet(21), image(22, (3, 12, 12))
    conv = ol.layer(model, "3")
    with torch.no_grad():
        fmap = conv(x[None])[0, 3]
    y, xx = divmod(int(fmap.argmax()), fmap.shape[1])
    peak = ol.occlusion(conv, x, T.peak(3), window=3, stride=1, aggregate="grid")
    unit = ol.occlusion(conv, x, T.unit(3, y, xx), window=3, stride=1, aggregate="grid")
    assert torch.equal(peak, unit)


def test_occluder_for_rf_matches_the_script():
    for rf in (1, 5, 10, 11, 25, 99, 163, 195):
        params = rf_script_params((0, 0, rf - 1, rf - 1), rf, (400, 400))
        size = params[0]["bottom_right"][0] - params[0]["top_left"][0] + 1
        steps = sorted({p["top_left"][0] for p in params})
        stride = steps[1] - steps[0] if len(steps) > 1 else max(size // 2, 1)
        assert ol.occluder_for_rf(rf) == (size, stride)


def test_model_and_inputs_are_untouched_also_when_a_call_raises():
    model = convnet(23)
    x = image(24, (3, 10, 10)).requires_grad_()
    before, x_before = ModelState.of(model), tensor_state(x)
    ol.occlusion(model, x, 1, window=3, fill="mean")
    ol.occlusion(ol.layer(model, "3"), x, T.peak(0), window=3, fill=ol.fills.uniform(), key=0)
    with pytest.raises(ol.OcclensError):
        ol.occlusion(model, x, 99, window=3)
    assert_untouched(model, before)
    assert tensor_state(x) == x_before


@given(
    model=testing.small_cnns(min_input=8, num_classes=4),
    x=testing.images(min_size=8, max_size=16),
    data=st.data(),
)
def test_captum_parity_on_generated_nets(model, x, data):
    model, x = model.double(), x.double()
    height, width = x.shape[1:]
    window = (data.draw(st.integers(1, height)), data.draw(st.integers(1, width)))
    stride = (data.draw(st.integers(1, window[0])), data.draw(st.integers(1, window[1])))
    target = data.draw(st.integers(0, 3))
    ours = ol.occlusion(model, x, target, window=window, stride=stride, edge="cover")
    theirs = captum_occlusion(model, x, target, window, stride, ppe=8)
    scale = theirs.abs().max().clamp(min=1e-6)
    assert ((ours - theirs).abs().max() / scale) <= 1e-5


@given(
    model=testing.small_cnns(min_input=10),
    x=testing.images(min_size=10, max_size=20),
    data=st.data(),
)
def test_occluders_outside_a_units_receptive_field_change_nothing(model, x, data):
    size = tuple(x.shape[1:])
    fh, fw = model.feature_size(size)
    y, xx = data.draw(st.integers(0, fh - 1)), data.draw(st.integers(0, fw - 1))
    channel = data.draw(st.integers(0, model.features(x[None]).shape[1] - 1))
    window = (data.draw(st.integers(1, size[0])), data.draw(st.integers(1, size[1])))
    stride = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    fill = data.draw(st.sampled_from([0.0, "mean", ol.fills.uniform(-3, 3)]))
    edge = data.draw(st.sampled_from(["fit", "cover"]))
    grid = ol.occlusion(
        ol.layer(model, "features"),
        x,
        T.unit(channel, y, xx),
        window=window,
        stride=stride,
        edge=edge,
        fill=fill,
        key=1,
        aggregate="grid",
        chunk_size=data.draw(st.sampled_from([None, 1, 3, 64])),
    )
    y0, x0, y1, x1 = model.receptive_box(y, xx, size)
    positions = captum_positions if edge == "cover" else fitting_positions
    rows = positions(size[0], window[0], stride[0])
    cols = positions(size[1], window[1], stride[1])
    assert grid.shape == (len(rows), len(cols))
    for i, (top, bottom) in enumerate(rows):
        for j, (left, right) in enumerate(cols):
            if not (top < y1 and bottom > y0 and left < x1 and right > x0):
                assert grid[i, j] == 0, (i, j, float(grid[i, j]))


@pytest.mark.parametrize("edge", ["fit", "cover"])
@pytest.mark.parametrize("how", ["mean", "sum", "grid"])
def test_box_restricts_windows_to_the_box(edge, how):
    """Windows start at the box's corner; "cover" clips the last one at the box's far side."""
    model, x = convnet(25), image(26, (3, 16, 15))
    box = (3, 2, 13, 12)  # 10 x 10, half-open

    def positions(lo, hi, window, stride):
        span = captum_positions if edge == "cover" else fitting_positions
        return [(lo + a, lo + b) for a, b in span(hi - lo, window, stride)]

    rows, cols = positions(3, 13, 4, 3), positions(2, 12, 3, 4)
    windows = grid_windows(rows, cols)
    deltas = deltas_loop(model, x, T.logit(1), windows, constant_fill(0.0))
    expected = {
        "mean": lambda: mean_map(16, 15, windows, deltas),
        "sum": lambda: sum_map(16, 15, windows, deltas),
        "grid": lambda: torch.tensor(deltas, dtype=torch.float64).view(len(rows), len(cols)),
    }[how]()
    ours = ol.occlusion(
        model, x, 1, window=(4, 3), stride=(3, 4), box=box, edge=edge, aggregate=how
    )
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    if how != "grid":
        outside = torch.ones(16, 15, dtype=torch.bool)
        outside[3:13, 2:12] = False
        assert torch.all(ours[outside] == 0)
