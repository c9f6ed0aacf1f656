"""occlens.image: file round trips, normalisation, colormaps against matplotlib, overlays, panels."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import occlens as ol
from occlens import image as oi

TOL = 1 / 255


def unchanged(*tensors: torch.Tensor):
    """Clone the inputs now; calling the result checks that nothing modified them."""
    before = [t.clone() for t in tensors]

    def check() -> None:
        for t, b in zip(tensors, before, strict=True):
            assert torch.equal(t, b)

    return check


# --- load / save -------------------------------------------------------------------------------


def test_save_load_round_trip_within_one_level(tmp_path):
    x = torch.rand(3, 9, 13, generator=torch.Generator().manual_seed(0))
    path = oi.save(x, tmp_path / "deep" / "er" / "x.png")
    assert path.exists()
    y = oi.load(path)
    assert y.shape == (3, 9, 13)
    assert y.dtype == torch.float32
    assert (y - x).abs().max() <= 0.5 * TOL + 1e-6
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("shape", [(1, 6, 7), (6, 7)])
def test_grayscale_loads_as_three_equal_channels(tmp_path, shape):
    x = torch.rand(*shape)
    y = oi.load(oi.save(x, tmp_path / "g.png"))
    assert y.shape == (3, 6, 7)
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    assert (y[0] - x.reshape(6, 7)).abs().max() <= TOL


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent ...
    rgba[:2, :, 3] = 255  # ... except the opaque black top half
    Image.fromarray(rgba).save(tmp_path / "a.png")
    y = oi.load(tmp_path / "a.png")
    assert torch.equal(y[:, :2], torch.zeros(3, 2, 4))
    assert torch.equal(y[:, 2:], torch.ones(3, 2, 4))


def test_sixteen_bit_keeps_precision(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    y = oi.load(tmp_path / "deep.png")
    assert torch.allclose(y[0, 0], torch.tensor([0, 1000, 65535]) / 65535, atol=1e-6)


def test_load_resizes(tmp_path):
    path = oi.save(torch.rand(3, 20, 30), tmp_path / "x.png")
    assert oi.load(path, size=8).shape == (3, 8, 8)
    assert oi.load(path, size=(10, 15)).shape == (3, 10, 15)


def test_load_errors(tmp_path):
    with pytest.raises(ol.OcclensError, match=r"load\(path\): no such file"):
        oi.load(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ol.OcclensError, match=r"cannot read .* as an image"):
        oi.load(tmp_path / "notes.txt")
    with pytest.raises(ol.OcclensError, match=r"load\(size\)"):
        oi.load(tmp_path / "missing.png", size=(0, 4))


def test_save_errors(tmp_path):
    with pytest.raises(ol.OcclensError, match="unknown file extension"):
        oi.save(torch.rand(3, 4, 4), tmp_path / "x.notaformat")
    with pytest.raises(ol.OcclensError, match=r"save\(image\)"):
        oi.save(np.zeros((4, 4)), tmp_path / "x.png")


# --- resize ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "out"),
    [((5, 7), (10, 14)), ((2, 5, 7), (2, 10, 14)), ((2, 3, 5, 7), (2, 3, 10, 14))],
)
def test_resize_shapes_and_planes_match_a_loop(shape, out):
    x = torch.rand(*shape)
    check = unchanged(x)
    y = oi.resize(x, (10, 14))
    assert y.shape == out
    planes = x.reshape(-1, 5, 7)
    loop = torch.stack([oi.resize(p, (10, 14)) for p in planes]).reshape(out)
    assert torch.allclose(y, loop)
    check()


def test_resize_antialiases_when_shrinking():
    noise = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert oi.resize(noise, 8).std() < 0.08  # averaged over 8x8 blocks; plain bilinear is ~0.14
    assert torch.allclose(oi.resize(torch.full((3, 32, 32), 0.3), 7), torch.full((3, 7, 7), 0.3))


def test_resize_nearest_and_identity():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert oi.resize(x, 4, mode="nearest")[::2, ::2].tolist() == x.tolist()
    same = oi.resize(x, 2)
    assert torch.equal(same, x) and same is not x


def test_resize_errors():
    with pytest.raises(ol.OcclensError, match=r"resize\(mode\)"):
        oi.resize(torch.rand(3, 4, 4), 2, mode="cubic")
    with pytest.raises(ol.OcclensError, match=r"resize\(x\).*floating-point"):
        oi.resize(torch.zeros(3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ol.OcclensError, match=r"resize\(x\)"):
        oi.resize(torch.rand(1, 1, 3, 4, 4), 2)


# --- normalize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5, 5), (2, 3, 5, 5)])
def test_normalize_denormalize_are_inverses(shape):
    x = torch.rand(*shape)
    check = unchanged(x)
    z = oi.normalize(x)
    mean = torch.tensor(oi.IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(oi.IMAGENET_STD).reshape(3, 1, 1)
    assert torch.allclose(z, (x - mean) / std)
    assert torch.allclose(oi.denormalize(z), x, atol=1e-6)
    assert torch.allclose(oi.normalize(oi.denormalize(x)), x, atol=1e-6)
    check()


def test_normalize_scalar_stats_and_errors():
    x = torch.rand(1, 4, 4)
    assert torch.allclose(oi.normalize(x, 0.5, 0.25), (x - 0.5) / 0.25)
    with pytest.raises(ol.OcclensError, match=r"normalize\(mean\): expected 1 finite number"):
        oi.normalize(x)
    with pytest.raises(ol.OcclensError, match=r"denormalize\(std\): std must be positive"):
        oi.denormalize(torch.rand(3, 4, 4), std=(1.0, 0.0, 1.0))
    with pytest.raises(ol.OcclensError, match="NaN"):
        oi.normalize(torch.full((3, 2, 2), float("nan")))


# --- to_pil ------------------------------------------------------------------------------------


def test_to_pil_minmax_on_a_constant_image_is_black_not_nan():
    for x in (torch.full((3, 4, 5), 7.0), torch.zeros(4, 5)):
        image = oi.to_pil(x, scale="minmax")
        assert image.size == (5, 4)
        assert np.asarray(image).max() == 0


def test_to_pil_modes_and_scales():
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    assert oi.to_pil(x).mode == "L"
    assert np.asarray(oi.to_pil(x)).tolist() == [[0, 0, 128, 255]]
    assert np.asarray(oi.to_pil(x, scale="minmax")).tolist() == [[0, 64, 96, 255]]
    assert oi.to_pil(torch.rand(1, 2, 2)).mode == "L"
    assert oi.to_pil(torch.rand(3, 2, 2)).mode == "RGB"


def test_to_pil_errors():
    with pytest.raises(ol.OcclensError, match=r"to_pil\(x\): expected 1 or 3 channels"):
        oi.to_pil(torch.rand(2, 4, 4))
    with pytest.raises(ol.OcclensError, match=r"x\[0\] of a batch"):
        oi.to_pil(torch.rand(1, 3, 4, 4))
    with pytest.raises(ol.OcclensError, match=r"to_pil\(scale\)"):
        oi.to_pil(torch.rand(4, 4), scale="percentile")
    with pytest.raises(ol.OcclensError, match=r"x\.float\(\) / 255"):
        oi.to_pil(torch.zeros(4, 4, dtype=torch.uint8))


# --- colormaps ---------------------------------------------------------------------------------


def test_colorize_endpoints_for_a_non_negative_map():
    heat = torch.tensor([[0.0, 1.0, 4.0]])
    check = unchanged(heat)
    rgb = oi.colorize(heat, "viridis")
    lut = oi.colormap("viridis")
    assert rgb.shape == (3, 1, 3)
    assert torch.allclose(rgb[:, 0, 0], lut[0]) and torch.allclose(rgb[:, 0, 2], lut[-1])
    # Default: sequential inferno over [0, max].
    assert torch.allclose(oi.colorize(heat)[:, 0, 2], oi.colormap("inferno")[-1])
    check()


def test_colorize_diverging_centre_is_zero():
    signed = torch.tensor([[-2.0, 0.0, 0.5]])
    rgb = oi.colorize(signed)  # RdBu_r over [-2, 2]
    centre = torch.tensor([0xF7, 0xF7, 0xF7]) / 255
    assert torch.allclose(rgb[:, 0, 1], centre, atol=1e-6)
    assert torch.allclose(rgb[:, 0, 0], oi.colormap("RdBu_r")[0])  # most negative: dark blue
    assert rgb[2, 0, 0] > rgb[0, 0, 0] and rgb[0, 0, 2] > rgb[2, 0, 2]


def test_colorize_limits_clip_mirror_and_compare_raw_scales():
    a = torch.tensor([[0.0, 1.0]])
    lut = oi.colormap("inferno")
    # Shared limits keep raw scales comparable; default limits normalise each map to its max.
    assert torch.equal(oi.colorize(a), oi.colorize(2 * a))
    assert not torch.equal(oi.colorize(a, vmin=0, vmax=2), oi.colorize(2 * a, vmin=0, vmax=2))
    assert torch.allclose(oi.colorize(10 * a, vmax=2.0)[:, 0, 1], lut[-1])  # clipped above
    assert torch.allclose(oi.colorize(a - 5, "inferno", vmin=-4, vmax=0)[:, 0, 0], lut[0])
    # A diverging map mirrors a single limit: vmax=4 means [-4, 4], so 2 sits at 3/4.
    expected = oi.colorize(torch.tensor([[0.75]]), "RdBu_r", vmin=0, vmax=1)
    got = oi.colorize(torch.tensor([[-1.0, 2.0]]), vmax=4.0)[:, :, 1:]
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("value", [0.0, 3.0, -2.0])
@pytest.mark.parametrize("cmap", [None, "viridis", "RdBu_r"])
def test_colorize_constant_maps_are_finite(value, cmap):
    rgb = oi.colorize(torch.full((4, 4), value), cmap)
    assert torch.isfinite(rgb).all() and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb == rgb[:, :1, :1]).all()


def test_colorize_zero_map_with_a_diverging_cmap_is_the_centre():
    rgb = oi.colorize(torch.zeros(2, 2), "RdBu_r")
    assert torch.allclose(rgb[:, 0, 0], oi.colormap("RdBu_r", n=3)[1])
    assert torch.allclose(oi.colorize(torch.zeros(2, 2))[:, 0, 0], oi.colormap("inferno")[0])


def test_colorize_accepts_a_lookup_table_and_reversal():
    lut = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(
        oi.colorize(torch.tensor([[0.0, 0.5, 1.0]]), lut)[0, 0], torch.tensor([0, 0.5, 1])
    )
    assert torch.allclose(oi.colormap("viridis_r"), oi.colormap("viridis").flip(0))
    assert torch.equal(oi.colormap("grey"), oi.colormap("gray"))


def test_colorize_errors():
    with pytest.raises(ol.OcclensError, match=r"colorize\(map\): expected a map \[H, W\]"):
        oi.colorize(torch.rand(3, 4, 4))
    with pytest.raises(ol.OcclensError, match="NaN"):
        oi.colorize(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ol.OcclensError, match=r"colorize\(vmin\): vmin=2.0 is above vmax=1.0"):
        oi.colorize(torch.rand(2, 2), vmin=2, vmax=1)
    with pytest.raises(ol.OcclensError, match=r"colorize\(vmax\): expected a finite number"):
        oi.colorize(torch.rand(2, 2), vmax=float("inf"))
    with pytest.raises(ol.OcclensError, match=r"colorize\(cmap\): expected a lookup table"):
        oi.colorize(torch.rand(2, 2), torch.rand(4))
    with pytest.raises(ol.OcclensError, match=r"colormap\(n\)"):
        oi.colormap("viridis", n=1)


def test_builtin_colormaps_work_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    for name in oi.BUILTIN_COLORMAPS:
        lut = oi.colormap(name)
        assert lut.shape == (256, 3) and lut.min() >= 0 and lut.max() <= 1
        assert oi.colorize(torch.rand(3, 3), name).shape == (3, 3, 3)
    with pytest.raises(ol.OcclensError, match="matplotlib is not installed"):
        oi.colorize(torch.rand(3, 3), "jet")


@pytest.mark.parametrize("name", ["viridis", "inferno", "RdBu", "RdBu_r", "gray"])
def test_builtin_tables_agree_with_matplotlib(name):
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps[name](np.arange(256))[:, :3]
    ours = oi.colormap(name).numpy()
    assert np.abs(ours - reference).max() < 1.5 / 255


def test_matplotlib_names_are_looked_up_when_installed():
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps["jet"](np.arange(256))[:, :3]
    assert np.allclose(oi.colormap("jet").numpy(), reference, atol=1e-6)
    with pytest.raises(ol.OcclensError, match="closest: 'jet'"):
        oi.colorize(torch.rand(2, 2), "jett")


# --- overlay -----------------------------------------------------------------------------------


def test_overlay_alpha_extremes():
    image, heat = torch.rand(3, 8, 8), torch.rand(8, 8)
    check = unchanged(image, heat)
    assert torch.equal(oi.overlay(image, heat, alpha=0.0), image)
    assert torch.equal(oi.overlay(image, heat, alpha=1.0), oi.colorize(heat))
    half = oi.overlay(image, heat, alpha=0.5, cmap="viridis")
    assert torch.allclose(half, 0.5 * image + 0.5 * oi.colorize(heat, "viridis"))
    check()


def test_overlay_upsamples_the_map_with_the_original_limits():
    image, heat = torch.rand(3, 16, 12), torch.randn(4, 3)
    out = oi.overlay(image, heat, alpha=1.0, vmin=-1.0, vmax=1.0)
    assert out.shape == (3, 16, 12)
    expected = oi.colorize(oi.resize(heat, (16, 12)), vmin=-1.0, vmax=1.0)
    assert torch.allclose(out, expected)


def test_overlay_shared_limits_compare_images():
    image, heat = torch.rand(3, 4, 4), torch.rand(4, 4)
    a = oi.overlay(image, heat, vmin=0.0, vmax=2.0)
    b = oi.overlay(image, 2 * heat, vmin=0.0, vmax=2.0)
    assert not torch.allclose(a, b)
    assert torch.allclose(oi.overlay(image, heat), oi.overlay(image, 2 * heat))


def test_overlay_grayscale_image_and_errors():
    assert oi.overlay(torch.rand(1, 4, 4), torch.rand(2, 2)).shape == (3, 4, 4)
    with pytest.raises(ol.OcclensError, match=r"overlay\(image\).*denormalize"):
        oi.overlay(oi.normalize(torch.ones(3, 4, 4)), torch.rand(4, 4))
    with pytest.raises(ol.OcclensError, match=r"overlay\(alpha\)"):
        oi.overlay(torch.rand(3, 4, 4), torch.rand(4, 4), alpha=1.5)
    with pytest.raises(ol.OcclensError, match=r"overlay\(map\)"):
        oi.overlay(torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    with pytest.raises(ol.OcclensError, match=r"overlay\(image\): expected 1 or 3 channels"):
        oi.overlay(torch.rand(4, 4, 4), torch.rand(4, 4))


# --- panel / draw_box --------------------------------------------------------------------------


def test_panel_size_arithmetic():
    images = [torch.rand(3, 10, 20) for _ in range(5)]
    grid = oi.panel(images, ncols=3, cell=(10, 20), pad=4)
    assert grid.size == (3 * 20 + 4 * 4, 2 * 10 + 3 * 4)
    titled = oi.panel(images, [f"#{i}" for i in range(5)], ncols=3, cell=(10, 20), pad=4)
    extra = titled.height - grid.height
    assert titled.width == grid.width and extra > 0 and extra % 2 == 0  # one title band per row
    assert oi.panel(images, ncols=9, pad=0).size == (5 * 20, 10)  # ncols capped at the count


def test_panel_mixes_pil_and_tensors_on_white():
    pil = Image.new("RGB", (6, 4), "black")
    grid = oi.panel([pil, torch.zeros(1, 8, 3), torch.zeros(3, 5, 5)], pad=2)
    assert grid.size == (4 * 2 + 3 * 6, 8 + 2 * 2)  # cell = the largest height and width, (8, 6)
    assert oi.panel(torch.zeros(4, 3, 5, 5), ncols=2, pad=0).size == (10, 10)  # a batch
    pixels = np.asarray(grid)
    assert (pixels[0, 0] == 255).all()  # white background
    assert (pixels[2 + 2, 2] == 0).all()  # the black PIL image, centred vertically in its cell


def test_panel_draws_titles_and_scales_to_the_cell():
    grid = oi.panel([torch.ones(3, 4, 8)], ["a title"], cell=(16, 16), pad=0)
    pixels = np.asarray(grid)
    title_h = grid.height - 16
    assert (pixels[:title_h] < 128).any()  # some black text
    assert (pixels[title_h + 4 : title_h + 12] == 255).all()  # 4x8 scaled to 8x16, centred


def test_panel_errors():
    with pytest.raises(ol.OcclensError, match=r"panel\(images\)"):
        oi.panel([])
    with pytest.raises(ol.OcclensError, match=r"panel\(titles\)"):
        oi.panel([torch.rand(3, 2, 2)], ["a", "b"])
    with pytest.raises(ol.OcclensError, match=r"panel\(images\[1\]\)"):
        oi.panel([torch.rand(3, 2, 2), "x.png"])
    with pytest.raises(ol.OcclensError, match=r"panel\(ncols\)"):
        oi.panel([torch.rand(3, 2, 2)], ncols=0)


def test_draw_box_outline_clipping_and_purity():
    image = torch.zeros(3, 6, 6)
    check = unchanged(image)
    boxed = oi.draw_box(image, (1, 2, 5, 6), color=(0.0, 1.0, 0.0), width=1)
    ring = torch.zeros(6, 6)
    ring[1:5, 2:6] = 1
    ring[2:4, 3:5] = 0
    assert torch.equal(boxed[1], ring) and torch.equal(boxed[0], torch.zeros(6, 6))
    # A box hanging off the top-left corner: only its bottom and right sides are visible.
    corner = oi.draw_box(image, (-3, -3, 3, 3))[0]
    assert corner[2, :3].tolist() == [1, 1, 1] and corner[:3, 2].tolist() == [1, 1, 1]
    assert corner.sum() == 5
    assert torch.equal(oi.draw_box(image, (10, 10, 12, 12)), image)  # entirely outside
    check()
    with pytest.raises(ol.OcclensError, match=r"draw_box\(box\)"):
        oi.draw_box(image, (3, 3, 3, 4))
    with pytest.raises(ol.OcclensError, match=r"draw_box\(color\)"):
        oi.draw_box(image, (0, 0, 2, 2), color=(1.0, 0.0))


def test_public_surface():
    assert ol.image is oi
    assert sorted(oi.__all__) == oi.__all__
    for name in oi.__all__:
        assert getattr(oi, name).__doc__ or name.isupper(), name


def test_overlay_magnitude_weight_shows_the_image_where_the_map_is_zero():
    image = torch.rand(3, 4, 4)
    signed = torch.zeros(4, 4)
    signed[0, 0], signed[3, 3] = 2.0, -1.0
    out = oi.overlay(image, signed, alpha=0.8, weight="magnitude")
    assert torch.equal(out[:, 1:3, 1:3], image[:, 1:3, 1:3])
    full = oi.overlay(image, signed, alpha=0.8)
    torch.testing.assert_close(out[:, 0, 0], full[:, 0, 0])  # the strongest pixel: full alpha
    halfway = 0.4 * oi.colorize(signed)[:, 3, 3] + 0.6 * image[:, 3, 3]
    torch.testing.assert_close(out[:, 3, 3], halfway)
    with pytest.raises(ol.OcclensError, match=r"overlay\(weight\): got 'loud'"):
        oi.overlay(image, signed, weight="loud")


# --- limits / colorbar -------------------------------------------------------------------------


def test_limits_shared_over_maps_of_any_size():
    a, b = torch.tensor([[0.0, 1.0]]), torch.full((3, 3), 4.0)
    check = unchanged(a, b)
    assert oi.limits([a, b]) == (0.0, 4.0)
    assert oi.limits(torch.stack([a[0], -3 * a[0]])) == (-3.0, 3.0)  # a batch; signed: symmetric
    assert oi.limits(torch.zeros(2, 2)) == (0.0, 0.0)
    values = torch.arange(1.0, 102.0).reshape(1, -1)
    assert oi.limits(values, percentile=90) == pytest.approx((0.0, 91.0))
    sparse = torch.zeros(50, 50)  # zero outside a small field: zeros do not count
    sparse[0, :3] = torch.tensor([1.0, -2.0, 3.0])
    assert oi.limits(sparse, percentile=50) == pytest.approx((-2.0, 2.0))
    check()
    with pytest.raises(ol.OcclensError, match=r"limits\(percentile\)"):
        oi.limits(a, percentile=0)
    with pytest.raises(ol.OcclensError, match=r"limits\(maps\[0\]\)"):
        oi.limits([torch.rand(3, 4, 4, 4)])


def test_colorbar_colours_follow_colorize():
    bar = oi.colorbar(0.0, 2.0, "viridis", length=101, thickness=6)
    assert bar.width == 101 and bar.height > 6
    pixels = np.asarray(bar)
    lut = oi.colorize(torch.linspace(0, 2, 101)[None], "viridis", vmin=0, vmax=2)
    expected = (lut[:, 0].T * 255).round().numpy()
    assert np.abs(pixels[0].astype(float) - expected).max() <= 1
    # Default: sequential for a non-negative range, diverging (centre colour at 0) when signed.
    assert np.array_equal(np.asarray(oi.colorbar(0.0, 1.0))[0, 0], [0, 0, 4])  # inferno's first
    signed = np.asarray(oi.colorbar(-1.0, 1.0, length=101))
    assert signed[0, 50].tolist() == [247, 247, 247]
    assert (signed[8:] < 128).any()  # tick labels in black
    assert oi.colorbar(1.0, 1.0).width == 160  # a flat range is fine
    with pytest.raises(ol.OcclensError, match=r"colorbar\(vmin\): vmin=2.0 is above vmax=1.0"):
        oi.colorbar(2.0, 1.0)
    with pytest.raises(ol.OcclensError, match=r"colorbar\(vmax\)"):
        oi.colorbar(0.0, float("nan"))


# --- occluder grid / RF box --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "stride", "edge"), [(4, 3, "fit"), (5, 3, "cover"), (3, 4, "fit")]
)
def test_draw_grid_marks_exactly_the_windows_occlusion_uses(window, stride, edge):
    image = torch.zeros(3, 14, 17)
    check = unchanged(image)
    marked = oi.draw_grid(image, window, stride, edge=edge, color=(0.0, 1.0, 0.0))
    check()
    # Occlusion with aggregate="center" writes each window's delta at its centre pixel.
    model = lambda x: x.sum(dim=(1, 2, 3))[:, None]  # noqa: E731
    centres = ol.occlusion(
        model, torch.ones(3, 14, 17), 0, window=window, stride=stride, edge=edge, aggregate="center"
    )
    dots = marked[1] > 0
    assert dots[centres > 0].all()
    outline = oi.draw_box(torch.zeros(3, 14, 17), (0, 0, window, window))[0] > 0
    assert torch.equal(dots, (centres > 0) | outline)
    assert torch.equal(marked[0], torch.zeros(14, 17))


def test_draw_grid_box_width_and_errors():
    image = torch.zeros(1, 20, 20)
    boxed = oi.draw_grid(image, 4, 2, box=(4, 4, 12, 12))
    assert boxed[0, :4].sum() == 0 and boxed[0, 12:].sum() == 0  # nothing outside the box
    assert boxed[0, 4, 4:12].tolist() == [1.0] * 8  # the box's outline
    thick = oi.draw_grid(torch.zeros(1, 12, 12), 6, 6, width=3)
    assert thick[0, 1:4, 1:4].sum() == 9 - 0  # a 3x3 dot around the centre (2, 2)
    with pytest.raises(ol.OcclensError, match=r"draw_grid\(window\)"):
        oi.draw_grid(image, 0)
    with pytest.raises(ol.OcclensError, match=r"draw_grid\(edge\)"):
        oi.draw_grid(image, 4, edge="wrap")
    with pytest.raises(ol.OcclensError, match=r"draw_grid\(box\)"):
        oi.draw_grid(image, 4, box=(0, 0, 30, 30))
    with pytest.raises(ol.OcclensError, match=r"draw_grid\(window\): no window"):
        oi.draw_grid(image, 30)
    with pytest.raises(ol.OcclensError, match=r"draw_grid\(color\)"):
        oi.draw_grid(torch.zeros(3, 8, 8), 4, color=(1.0, 0.0))


def test_draw_rf_draws_the_unclipped_region():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 5, padding=2), torch.nn.Conv2d(1, 1, 3, padding=1)
    )
    rf = ol.receptive_field(net, "1", 10)
    assert rf.region(0, 0, clip=False) == (-3, -3, 4, 4)
    drawn = oi.draw_rf(torch.zeros(3, 10, 10), rf, 0, 0, color=(1.0, 1.0, 1.0))
    assert torch.equal(drawn, oi.draw_box(torch.zeros(3, 10, 10), (-3, -3, 4, 4), (1.0, 1.0, 1.0)))
    assert drawn[0, 3, :4].tolist() == [1.0] * 4 and drawn[0, :3, :3].sum() == 0
    with pytest.raises(ol.OcclensError, match=r"draw_rf\(rf\)"):
        oi.draw_rf(torch.zeros(3, 4, 4), (0, 0, 2, 2), 0, 0)


# --- compare -----------------------------------------------------------------------------------


def _cell_pixels(figure, row: int, col: int, cell: int, pad: int, title_h: int, bar_h: int):
    left = pad + col * (cell + pad)
    top = pad + row * (title_h + cell + bar_h + pad) + title_h
    return np.asarray(figure)[top : top + cell, left : left + cell]


def _compare_layout(cell=16, pad=2, colorbars=True):
    """Title and colorbar heights, measured on a one-cell figure."""
    plain = oi.compare(
        torch.ones(3, 4, 4),
        {"m": torch.ones(4, 4)},
        cell=cell,
        pad=pad,
        show_image=False,
        colorbars=False,
    )
    title_h = plain.height - cell - 2 * pad
    bar_h = 0
    if colorbars:
        barred = oi.compare(
            torch.ones(3, 4, 4), {"m": torch.ones(4, 4)}, cell=cell, pad=pad, show_image=False
        )
        bar_h = barred.height - plain.height
    return title_h, bar_h


def test_compare_layout_and_purity():
    images, heat = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    check = unchanged(images, heat)
    figure = oi.compare(images, {"a": heat, "b": -heat}, cell=16, pad=2)
    title_h, bar_h = _compare_layout()
    assert figure.size == (3 * 16 + 4 * 2, 2 * (title_h + 16 + bar_h) + 3 * 2)
    bare = oi.compare(images, {"a": heat}, cell=16, pad=2, colorbars=False, show_image=False)
    assert bare.size == (16 + 2 * 2, 2 * (title_h + 16) + 3 * 2)
    check()
    one = oi.compare(images[0], {"a": heat[0]}, cell=(16, 24), pad=0)  # one image, [h, w] map
    assert one.width == 2 * 24


def test_compare_scales():
    image = torch.full((3, 8, 8), 0.5)
    weak, strong = torch.full((8, 8), 1.0), torch.full((8, 8), 4.0)
    weak[0, 0] = strong[0, 0] = 0.0
    maps = {"m": [weak, strong]}
    kwargs = dict(cell=8, pad=0, colorbars=False, show_image=False, alpha=1.0, weight="uniform")
    title_h, _ = _compare_layout(cell=8, pad=0, colorbars=False)

    def cells(figure):
        return [_cell_pixels(figure, r, 0, 8, 0, title_h, 0)[4, 4] for r in (0, 1)]

    per_map = cells(oi.compare([image, image], maps, **kwargs))
    assert np.array_equal(per_map[0], per_map[1])  # each map spans its own range
    shared = cells(oi.compare([image, image], maps, scale="shared", **kwargs))
    assert not np.array_equal(shared[0], shared[1])  # one range: the weak map is darker
    lut = (oi.colormap("inferno") * 255).round()
    assert np.abs(shared[1] - lut[-1].numpy()).max() <= 1
    assert (
        np.abs(
            shared[0] - (oi.colorize(torch.tensor([[0.25]]), vmin=0, vmax=1)[:, 0, 0] * 255).numpy()
        ).max()
        <= 1
    )
    fixed = cells(oi.compare([image, image], maps, scale=8.0, **kwargs))
    assert (
        np.abs(
            fixed[1] - (oi.colorize(torch.tensor([[0.5]]), vmin=0, vmax=1)[:, 0, 0] * 255).numpy()
        ).max()
        <= 1
    )
    per_column = cells(oi.compare([image, image], maps, scale={"m": 4.0}, **kwargs))
    assert np.array_equal(per_column, shared)


def test_compare_signed_columns_are_diverging_and_centred():
    image = torch.full((3, 4, 4), 0.5)
    signed = torch.zeros(4, 4)
    signed[0, 0], signed[3, 3] = -1.0, 3.0
    kwargs = dict(cell=4, pad=0, colorbars=False, show_image=False, alpha=1.0, weight="uniform")
    figure = oi.compare(image, {"s": signed}, **kwargs)
    title_h, _ = _compare_layout(cell=4, pad=0, colorbars=False)
    pixels = _cell_pixels(figure, 0, 0, 4, 0, title_h, 0)
    assert pixels[1, 1].tolist() == [247, 247, 247]  # 0: RdBu_r's centre
    assert pixels[3, 3, 0] > pixels[3, 3, 2] and pixels[0, 0, 2] > pixels[0, 0, 0]


def test_compare_errors():
    image, heat = torch.rand(3, 4, 4), torch.rand(4, 4)
    with pytest.raises(ol.OcclensError, match=r"compare\(maps\)"):
        oi.compare(image, heat)
    with pytest.raises(ol.OcclensError, match=r"compare\(maps\['a'\]\).*max_channels"):
        oi.compare(image, {"a": torch.rand(1, 3, 4, 4)})
    with pytest.raises(ol.OcclensError, match=r"compare\(maps\['a'\]\): has 3 maps.*max_channels"):
        oi.compare(image, {"a": torch.rand(3, 4, 4)})  # a gradient map [C, H, W]
    with pytest.raises(ol.OcclensError, match=r"compare\(maps\['a'\]\): has 2 maps for 1 images"):
        oi.compare(image, {"a": torch.rand(2, 4, 4)})
    with pytest.raises(ol.OcclensError, match=r"compare\(scale\)"):
        oi.compare(image, {"a": heat}, scale="global")
    with pytest.raises(ol.OcclensError, match=r"compare\(scale\): no map titled 'b'"):
        oi.compare(image, {"a": heat}, scale={"b": 1.0})
    with pytest.raises(ol.OcclensError, match=r"compare\(scale\)"):
        oi.compare(image, {"a": heat}, scale=-1.0)
    with pytest.raises(ol.OcclensError, match=r"compare\(row_titles\)"):
        oi.compare(image, {"a": heat}, row_titles=["x", "y"])
    with pytest.raises(ol.OcclensError, match=r"compare\(background\)"):
        oi.compare(image, {"a": heat}, background="black")
    with pytest.raises(ol.OcclensError, match=r"compare\(image\).*denormalize"):
        oi.compare(oi.normalize(torch.ones(3, 4, 4)), {"a": heat})


def test_overlay_magnitude_weight_on_a_flat_range_shows_the_image():
    image = torch.rand(3, 4, 4)
    assert torch.equal(oi.overlay(image, torch.zeros(4, 4), weight="magnitude"), image)
    spike = torch.zeros(4, 4)
    spike[1, 1] = 5.0
    out = oi.overlay(image, spike, alpha=1.0, vmin=0.0, vmax=0.0, weight="magnitude")
    assert torch.equal(out[:, 0, 0], image[:, 0, 0])
    assert torch.allclose(out[:, 1, 1], oi.colormap("inferno")[-1])


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_from_pil_reads_an_image_as_load_reads_its_file(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (9, 7), dtype=np.uint16))
    else:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 255, (9, 7, channels), dtype=np.uint8)
        img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    img.save(tmp_path / "x.png")
    x = oi.from_pil(img)
    assert x.shape == (3, 9, 7) and x.dtype == torch.float32
    assert torch.equal(x, oi.load(tmp_path / "x.png"))
    assert torch.equal(oi.from_pil(img, size=(4, 3)), oi.load(tmp_path / "x.png", size=(4, 3)))
    if mode == "RGB":  # independent of both: numpy's own conversion
        expected = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(x, expected)


def test_methods_say_how_to_convert_numpy_and_pil_images():
    model = ol.testing.tiny_cnn()
    with pytest.raises(
        ol.OcclensError,
        match=r"saliency\(x\): .*numpy array\[16, 16, 3\] uint8.*"
        r"torch.from_numpy\(a\).permute\(2, 0, 1\)",
    ):
        ol.saliency(model, np.zeros((16, 16, 3), np.uint8), 0)
    with pytest.raises(ol.OcclensError, match=r"occlusion\(x\): .*PIL.*occlens.image.from_pil"):
        ol.occlusion(model, Image.new("RGB", (16, 16)), 0, window=4)
    with pytest.raises(ol.OcclensError, match=r"from_pil\(img\): expected a PIL image"):
        oi.from_pil(np.zeros((4, 4, 3)))
