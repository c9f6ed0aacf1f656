"""Krypton's approximations (`occlusion_approximate`) against plain-loop references.

Projective-field thresholding is defined per occluder and layer: each convolution or pool is
computed on the whole occluded input, and only its patch is kept, the rest of the output staying
clean. The patch is the layer's dirty box (Krypton's interval rule), cut to its central
``round(tau * n)`` units on an ``n``-unit axis, and nothing else: how the engine batches the
occluders must not show. `thresholded_reference` computes exactly that, one occluder and one layer
at a time, with whole-tensor layers; at ``tau=1`` it must give the exact occlusion map, which checks the
reference itself. Adaptive drill-down is checked against a loop that interpolates the coarse
grid with `numpy.interp` and refines the largest positions one by one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import occlens as ol

WINDOW_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def dirty_axis(lo: int, hi: int, layer: nn.Module, axis: int, n: int) -> tuple[int, int]:
    """Output rows of `layer` that read any of input rows ``lo .. hi - 1``."""
    k, s = pair(layer.kernel_size)[axis], pair(layer.stride)[axis]
    p, d = pair(layer.padding)[axis], pair(getattr(layer, "dilation", 1))[axis]
    first = math.ceil((lo + p - d * (k - 1)) / s)
    last = (hi - 1 + p) // s + 1
    return max(0, min(first, n)), max(0, min(last, n))


def central(lo: int, hi: int, cap: int) -> tuple[int, int]:
    if hi - lo <= cap:
        return lo, hi
    start = (lo + hi - cap) // 2
    return start, start + cap


def thresholded_reference(model: nn.Sequential, x, target: int, window: int, stride: int, tau):
    """The `[rows, cols]` grid of deltas of `occlusion_approximate(..., tau=tau, fill=0.0)`."""
    layers = list(model)
    split = next(i for i, m in enumerate(layers) if not isinstance(m, (*WINDOW_LAYERS, nn.ReLU)))
    patch_layers, head = layers[:split], nn.Sequential(*layers[split:])
    image = x[None]
    clean = [image]
    with torch.no_grad():
        for layer in patch_layers:
            clean.append(layer(clean[-1]))
        clean_score = float(head(clean[-1])[0, target])
    size = x.shape[-1]
    starts = list(range(0, size - window + 1, stride))
    occluders = [(y, c) for y in starts for c in starts]
    boxes = []  # per occluder, per layer output: (y0, y1, x0, x1)
    for y, c in occluders:
        box, chain = (y, y + window, c, c + window), []
        for layer, out in zip(patch_layers, clean[1:], strict=True):
            if box[0] >= box[1] or box[2] >= box[3]:
                box = (0, 0, 0, 0)  # nothing changed here, so nothing changes after
            elif isinstance(layer, WINDOW_LAYERS):
                h, w = out.shape[-2:]
                ys, xs = dirty_axis(*box[:2], layer, 0, h), dirty_axis(*box[2:], layer, 1, w)
                if tau < 1:
                    ys = central(*ys, max(1, round(tau * h)))
                    xs = central(*xs, max(1, round(tau * w)))
                box = (*ys, *xs)
            chain.append(box)
        boxes.append(chain)
    deltas = []
    with torch.no_grad():
        for (y, c), chain in zip(occluders, boxes, strict=True):
            if any(b[0] >= b[1] or b[2] >= b[3] for b in chain):
                deltas.append(0.0)  # the occluder changes nothing the head reads
                continue
            current = image.clone()
            current[..., y : y + window, c : c + window] = 0.0
            for i, layer in enumerate(patch_layers):
                whole, out = layer(current), clean[i + 1].clone()
                y0, y1, x0, x1 = chain[i]
                out[..., y0:y1, x0:x1] = whole[..., y0:y1, x0:x1]
                current = out
            deltas.append(clean_score - float(head(current)[0, target]))
    return torch.tensor(deltas, dtype=torch.float64).view(len(starts), len(starts))


def network(blocks, channels: int, size: int, classes: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for conv, pool in blocks:
        k, s, p, d = conv
        layers += [nn.Conv2d(c, channels, k, stride=s, padding=p, dilation=d), nn.ReLU()]
        c = channels
        if pool is not None:
            kind, pk, ps = pool
            layers.append((nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(pk, stride=ps))
    body = nn.Sequential(*layers).double()
    with torch.no_grad():
        features = body(torch.zeros(1, 3, size, size, dtype=torch.float64)).numel()
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, classes)).double().eval()


def delta_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to `b`'s largest delta; where a threshold drops every change,
    `b` is exactly 0 and float64 rounding of the scores (1e-17) is measured against 1e-6."""
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6)


def test_the_reference_is_exact_at_tau_one_and_the_engine_matches_it_below():
    model = network([((3, 1, 1, 1), ("max", 2, 2)), ((3, 1, 1, 1), ("max", 2, 2))], 4, 32, 3, 0)
    x = torch.rand(3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    options = dict(window=6, stride=4, aggregate="grid")
    exact = ol.occlusion(model, x, 1, engine="batched", **options)
    assert delta_error(thresholded_reference(model, x, 1, 6, 4, 1.0), exact) < 1e-12
    for tau in (0.75, 0.5, 0.3, 0.1):
        ours = ol.occlusion_approximate(model, x, 1, tau=tau, **options)
        reference = thresholded_reference(model, x, 1, 6, 4, tau)
        assert delta_error(ours, reference) < 1e-10, tau
    assert delta_error(reference, exact) > 1e-3  # tau=0.1 does drop changes


conv = st.tuples(
    st.sampled_from([1, 2, 3, 5]),  # kernel
    st.sampled_from([1, 1, 2]),  # stride
    st.integers(0, 2),  # padding
    st.sampled_from([1, 1, 2]),  # dilation
).filter(lambda c: c[2] <= (c[3] * (c[0] - 1)) // 2)
pool = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["max", "avg"]), st.sampled_from([2, 3]), st.sampled_from([1, 2])),
)


@settings(max_examples=25, deadline=None)
@given(
    blocks=st.lists(st.tuples(conv, pool), min_size=1, max_size=3),
    size=st.integers(20, 36),
    window=st.integers(2, 9),
    stride=st.integers(2, 7),
    tau=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
    chunk_size=st.sampled_from([None, 1, 5]),
)
def test_thresholding_equals_the_per_layer_reference_on_generated_nets(
    blocks, size, window, stride, tau, seed, chunk_size
):
    try:
        model = network(blocks, 3, size, 4, seed)
    except RuntimeError:  # the layers shrink the image to nothing
        assume(False)
    x = torch.rand(
        3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    options = dict(window=window, stride=stride, aggregate="grid")
    reference = thresholded_reference(model, x, 2, window, stride, tau)
    if tau == 1.0:
        exact = ol.occlusion(model, x, 2, engine="batched", **options)
        assert delta_error(reference, exact) < 1e-10
    ours = ol.occlusion_approximate(model, x, 2, tau=tau, chunk_size=chunk_size, **options)
    assert delta_error(ours, reference) < 1e-10


def drilled_reference(exact: np.ndarray, factor: int, fraction: float) -> np.ndarray:
    """Drill-down with exact values at the evaluated positions, one position at a time."""
    rows, cols = exact.shape
    ri = list(range(0, rows, factor)) + ([rows - 1] if (rows - 1) % factor else [])
    ci = list(range(0, cols, factor)) + ([cols - 1] if (cols - 1) % factor else [])
    coarse = exact[np.ix_(ri, ci)]
    across = np.stack([np.interp(np.arange(cols), ci, row) for row in coarse])  # [len(ri), cols]
    table = np.stack([np.interp(np.arange(rows), ri, col) for col in across.T], axis=1)
    done = np.zeros_like(exact, dtype=bool)
    done[np.ix_(ri, ci)] = True
    table[done] = exact[done]
    candidates = sorted(
        (-abs(table[r, c]), r, c) for r in range(rows) for c in range(cols) if not done[r, c]
    )
    for _, r, c in candidates[: round(fraction * rows * cols)]:
        table[r, c] = exact[r, c]
    return table


@pytest.mark.parametrize(
    ("factor", "fraction"), [(2, 0.25), (3, 0.1), (4, 0.5), (5, 0.0), (1, 0.3)]
)
def test_drill_down_equals_a_loop_over_interpolation_and_refinement(factor, fraction):
    model = ol.testing.tiny_cnn(num_classes=3, key=3).double()
    x = torch.rand(3, 40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    options = dict(window=5, stride=3, aggregate="grid")
    exact = ol.occlusion(model, x, 1, engine="batched", **options)
    ours = ol.occlusion_approximate(model, x, 1, drill=(factor, fraction), **options)
    reference = drilled_reference(exact.numpy(), factor, fraction)
    np.testing.assert_allclose(
        ours.numpy(), reference, rtol=0, atol=1e-9 * float(exact.abs().max())
    )
    evaluated = np.isclose(ours.numpy(), exact.numpy(), rtol=0, atol=1e-12)
    rows, cols = exact.shape
    coarse = len(range(0, rows, factor)) + bool((rows - 1) % factor)
    coarse *= len(range(0, cols, factor)) + bool((cols - 1) % factor)
    assert evaluated.sum() >= min(rows * cols, coarse + round(fraction * rows * cols))


@pytest.mark.parametrize("aggregate", ["mean", "grid", "sum"])
def test_approximation_ssim_compares_the_maps_that_aggregate_makes(aggregate):
    from occlens._incremental_approx import ssim

    model = ol.testing.tiny_cnn(num_classes=3, key=5).double()
    xs = torch.rand(2, 3, 36, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    options = dict(window=6, stride=3, aggregate=aggregate)
    report = ol.approximation_ssim(model, xs, 2, tau=0.3, drill=(3, 0.1), **options)
    exact = ol.occlusion(model, xs, 2, engine="batched", **options)
    rough = ol.occlusion_approximate(model, xs, 2, tau=0.3, drill=(3, 0.1), **options)
    assert rough.shape == exact.shape == ((2, 11, 11) if aggregate == "grid" else (2, 36, 36))
    expected = tuple(ssim(a, e) for a, e in zip(rough, exact, strict=True))
    assert report.ssim == pytest.approx(expected, abs=1e-9)
    assert all(v < 1 for v in report.ssim)


@settings(max_examples=15, deadline=None)
@given(
    model=ol.testing.small_cnns(min_input=10, num_classes=3),
    x=ol.testing.images(min_size=10, max_size=20),
    window=st.integers(2, 6),
    stride=st.integers(1, 4),
    tau=st.floats(0.1, 0.9),
)
def test_thresholding_does_not_depend_on_the_chunks_on_residual_nets(model, x, window, stride, tau):
    """Residual adds merge cut boxes: a chunk's patches hold units outside an occluder's box,
    which must stand for clean values, whatever else the chunk holds."""
    model, x = model.double(), x.double()
    window = min(window, *x.shape[1:])
    options = dict(window=window, stride=stride, aggregate="grid", tau=tau)
    one = ol.occlusion_approximate(model, x, 1, chunk_size=1, **options)
    for chunk_size in (None, 7, 4096):
        ours = ol.occlusion_approximate(model, x, 1, chunk_size=chunk_size, **options)
        assert delta_error(ours, one) < 1e-10, chunk_size
