"""Empirical receptive fields recover a known spatial weighting, also at the image border."""

from __future__ import annotations

import pytest
import torch
from _state import ModelState, assert_untouched
from torch import nn

import occlens as ol
from occlens._empirical_rf import empirical_rf

K = 9


def weighting() -> torch.Tensor:
    """An off-centre, asymmetric Gaussian: a misaligned canvas cannot correlate with it."""
    ys, xs = torch.meshgrid(torch.arange(K.__float__()), torch.arange(K.__float__()), indexing="ij")
    return torch.exp(-((ys - 2.0) ** 2) / 4.0 - (xs - 6.0) ** 2 / 9.0).double()


def synthetic_unit() -> nn.Module:
    """One linear unit per location whose response is `weighting()` applied to its 9x9 field."""
    conv = nn.Conv2d(3, 1, K, padding=K // 2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(weighting().expand(1, 3, K, K) / 3)
    return nn.Sequential(conv).eval()


def images(n: int, size: int = 24, *, border: bool, seed: int = 0) -> torch.Tensor:
    """Faint noise plus one brighter blob; with `border`, the blob sits at an image edge.

    Pixel values stay small next to the U[-1, 1) occluders, so the expected |delta| of an
    occluder is the same multiple of the unit's weight everywhere in its field."""
    g = torch.Generator().manual_seed(seed)
    x = 0.02 * torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    for i in range(n):
        if border:
            y, c = [
                (0, int(torch.randint(0, size, (1,), generator=g))),
                (int(torch.randint(0, size, (1,), generator=g)), size - 1),
            ][i % 2]
        else:
            y, c = (int(v) for v in torch.randint(6, size - 6, (2,), generator=g))
        x[i, :, max(y - 1, 0) : y + 2, max(c - 1, 0) : c + 2] += 0.08
    return x


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("border", [False, True])
def test_recovers_a_known_spatial_weighting(border):
    model, x = synthetic_unit(), images(150, border=border)
    erf = empirical_rf(model, "0", 0, x, k=100, key=0)
    assert erf.map.shape == (K, K)
    seen = erf.coverage > 0
    average = erf.map * len(erf.top.indices) / erf.coverage.clamp(min=1)
    r = correlation(average[seen], weighting()[seen])
    assert r >= 0.95, r
    assert divmod(int(average.argmax()), K) == (2, 6)
    if border:
        # the blobs sit at the edges, so every field is clipped and part of the canvas is unseen
        assert (erf.coverage < 100).any()
        rf = ol.receptive_field(model, "0", (24, 24))
        clipped = [
            rf.region(y, c) != rf.region(y, c, clip=False) for y, c in erf.top.locations.tolist()
        ]
        assert sum(clipped) > 0.9 * len(clipped)


def test_centre_of_mass_and_effective_size_follow_the_weighting():
    model, x = synthetic_unit(), images(60, border=False)
    erf = empirical_rf(model, "0", 0, x, k=30, key=1)
    cy, cx = erf.center_of_mass
    w = weighting()
    expected_y = float((w.sum(1) * torch.arange(K)).sum() / w.sum())
    expected_x = float((w.sum(0) * torch.arange(K)).sum() / w.sum())
    assert abs(cy - expected_y) < 0.5 and abs(cx - expected_x) < 0.5
    assert erf.area == int((erf.map >= 0.2 * erf.map.max()).sum())
    assert erf.effective_size == pytest.approx(erf.area**0.5)


def test_same_key_same_map_and_another_key_another():
    model, x = synthetic_unit(), images(20, border=False, seed=3)
    one = empirical_rf(model, "0", 0, x, k=5, window=3, stride=2, key=7)
    assert torch.equal(one.map, empirical_rf(model, "0", 0, x, k=5, window=3, stride=2, key=7).map)
    assert not torch.equal(
        one.map, empirical_rf(model, "0", 0, x, k=5, window=3, stride=2, key=8).map
    )


def test_each_image_is_the_occlusion_of_its_peak_unit_pasted_at_its_offset():
    """A plain loop over the top images: occlusion inside the field, moved into the canvas."""
    model = ol.testing.tiny_cnn().double().eval()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = empirical_rf(model, "features.2", 1, x, k=4, window=2, stride=1, fill=0.0)
    rf = ol.receptive_field(model, "features.2", (16, 16))
    unit_fn = ol.layer(model, "features.2")
    canvas = torch.zeros(rf.size, dtype=torch.float64)
    for index, (y, c) in zip(ours.top.indices.tolist(), ours.top.locations.tolist(), strict=True):
        full = ol.occlusion(
            unit_fn,
            x[index],
            ol.targets.unit(1, y, c),
            window=2,
            stride=1,
            fill=0.0,
            box=rf.region(y, c),
            aggregate="center",
            absolute=True,
        )
        y0, x0, y1, x1 = rf.region(y, c)
        u0, v0, _, _ = rf.region(y, c, clip=False)
        canvas[y0 - u0 : y1 - u0, x0 - v0 : x1 - v0] += full[y0:y1, x0:x1]
    torch.testing.assert_close(ours.map, canvas / 4, rtol=0, atol=0)


def test_upsample_engine_is_dnnbrains_patch_of_the_best_unit():
    model = synthetic_unit()  # jump 1: the activation map already has the image's size
    x = images(6, border=False, seed=5)
    ours = empirical_rf(model, "0", 0, x, k=3, engine="upsample")
    rf = ol.receptive_field(model, "0", (24, 24))
    canvas = torch.zeros(K, K, dtype=torch.float64)
    for index in ours.top.indices.tolist():
        activation = model(x[index : index + 1])[0, 0].detach()
        best, where = -1e300, None
        for y in range(24):
            for c in range(24):
                y0, x0, y1, x1 = rf.region(y, c)
                mean = float(activation[y0:y1, x0:x1].mean())
                if mean > best:
                    best, where = mean, (y, c)
        y0, x0, y1, x1 = rf.region(*where)
        u0, v0, _, _ = rf.region(*where, clip=False)
        canvas[y0 - u0 : y1 - u0, x0 - v0 : x1 - v0] += activation[y0:y1, x0:x1]
    torch.testing.assert_close(ours.map, canvas / 3, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(k=0), r"empirical_rf\(k\): got 0"),
        (dict(engine="gradient"), r"empirical_rf\(engine\): got 'gradient'"),
        (dict(aggregate="sum"), r"empirical_rf\(aggregate\): got 'sum'"),
        (dict(key=None), r"empirical_rf\(key\)"),
        (dict(images=torch.rand(3, 24, 24)), r"empirical_rf\(images\): got one image"),
        (dict(images=[torch.rand(3, 24, 24)]), r"empirical_rf\(images\): got \["),
        (dict(k=100), r"empirical_rf\(k\)"),
    ],
)
def test_bad_input(options, match):
    model = synthetic_unit()
    before = ModelState.of(model)
    arguments = dict(images=images(4, border=False), k=2, key=0)
    arguments.update(options)
    with pytest.raises(ol.OcclensError, match=match):
        empirical_rf(model, "0", 0, **arguments)
    assert_untouched(model, before)
