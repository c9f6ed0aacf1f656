"""masked_image: DNNBrain's MaskedImage written as a plain loop over scikit-image (the reference),
the hull and erosion against scikit-image, the ratio it reports, the shapes model, errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _state import ModelState, assert_untouched, tensor_state
from torch import nn

import occlens as ol
from occlens import zoo
from occlens._morphology import convex_hull, erode
from occlens._ops import gaussian_blur

skimage = pytest.importorskip("skimage")
from skimage.color import rgb2gray  # noqa: E402
from skimage.morphology import convex_hull_image, erosion, footprint_rectangle  # noqa: E402


def blob_image(size: int = 20, seed: int = 0) -> torch.Tensor:
    """Faint noise with a bright disc in the middle."""
    gen = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.rand(3, size, size, generator=gen, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (ys - size / 2) ** 2 + (xs - size / 2) ** 2 < (size / 4) ** 2
    image[:, disc] += torch.tensor([0.8, 0.6, 0.3], dtype=torch.float64)[:, None]
    return image


class CentreNet(nn.Module):
    """conv -> ReLU -> mean over the central 6x6 units: brightness near the centre drives it."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(self.conv.weight.shape, generator=gen) - 0.3)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        units = torch.relu(self.conv(x))[:, :, h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3]
        return units.mean(dim=(2, 3))


def small_net() -> nn.Module:
    return CentreNet().eval()


def loop_masked(model, image, target, *, threshold=1.0, sigma=1.0, keep=0.9, max_steps=100):
    """DNNBrain's put_mask with its bugs fixed, written with scikit-image, one forward per mask."""
    gray = rgb2gray(image.permute(1, 2, 0).numpy())
    fluc = np.abs(gray - gray.mean())
    mask = convex_hull_image(fluc > np.std(fluc) * threshold)
    fill = image.mean(dim=(1, 2), keepdim=True)

    def score(m):
        soft = gaussian_blur(torch.from_numpy(m).double(), sigma).clamp(0, 1)
        with torch.no_grad():
            return float(model((soft * image + (1 - soft) * fill)[None])[0, target])

    trace = [score(mask)]
    masks = [mask]
    while len(masks) <= max_steps and masks[-1].any():
        eroded = erosion(masks[-1], footprint_rectangle((3, 3)))
        if (eroded == masks[-1]).all():
            break
        masks.append(eroded)
        trace.append(score(masks[-1]))
        if trace[-1] < keep * trace[0] - 1e-5 * abs(trace[0]):
            return torch.from_numpy(masks[-2]), trace, len(masks) - 2
    return torch.from_numpy(masks[-1]), trace, len(masks) - 1


@pytest.mark.parametrize("batch_size", [1, 4, None])
@pytest.mark.parametrize("keep", [0.9, 0.5])
def test_equals_the_plain_loop(batch_size, keep):
    model, image = small_net(), blob_image()
    with torch.no_grad():
        target = int(model(image[None]).argmax())
    mask, trace, steps = loop_masked(model, image, target, keep=keep)
    found = ol.masked_image(model, image, target, keep=keep, batch_size=batch_size)
    assert found.steps == steps
    assert torch.equal(found.mask, mask)
    assert found.trace.tolist() == pytest.approx(trace, rel=1e-12)
    assert found.kept >= keep - 1e-5


def test_analytic_model_erodes_until_the_score_would_fall():
    image = torch.zeros(3, 24, 24, dtype=torch.float64)
    image[:, 8:16, 8:16] = 1.0
    # the score reads a 2x2 centre: erosions keep it until the blurred edge reaches it
    model = lambda x: x[:, :, 11:13, 11:13].mean(dim=(1, 2, 3))[:, None]  # noqa: E731
    found = ol.masked_image(model, image, 0, sigma=1.0, fill=0.0)
    assert torch.equal(found.region, image[0] > 0)
    goal = 0.9 * found.baseline
    assert found.trace[found.steps] >= goal
    assert found.trace[found.steps + 1] < goal  # one more erosion would fall below
    assert len(found.trace) == found.steps + 2
    assert (found.mask <= found.region).all()
    expected = found.region
    for _ in range(found.steps):
        expected = erode(expected)
    assert torch.equal(found.mask, expected)
    torch.testing.assert_close(found.image, found.soft * image)


def test_reports_the_score_of_the_image_it_returns():
    model, image = small_net(), blob_image(seed=3)
    found = ol.masked_image(model, image, 0, keep=0.8, sigma=0.7)
    with torch.no_grad():
        assert float(model(found.image[None])[0, 0]) == pytest.approx(found.score, rel=1e-9)
        assert float(model(image[None])[0, 0]) == pytest.approx(found.clean, rel=1e-12)
    assert found.kept == pytest.approx(found.score / found.baseline)


def test_region_is_the_hull_of_the_fluctuating_pixels():
    image = blob_image(seed=5)
    heat = torch.rand(20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    heat[5:9, 3:15] += 2.0
    model = lambda x: x.mean(dim=(1, 2, 3))[:, None]  # noqa: E731
    for source, threshold in ((None, 1.0), (heat, 1.0), (heat, 2.5)):
        m = rgb2gray(image.permute(1, 2, 0).numpy()) if source is None else source.numpy()
        fluc = np.abs(m - m.mean())
        expected = convex_hull_image(fluc > fluc.std() * threshold)
        found = ol.masked_image(model, image, 0, heat=source, threshold=threshold, max_steps=0)
        assert torch.equal(found.region, torch.from_numpy(expected))
        assert torch.equal(found.mask, found.region)
        assert found.steps == 0


@pytest.mark.parametrize("seed", range(40))
def test_hull_and_erosion_match_scikit_image(seed):
    gen = torch.Generator().manual_seed(seed)
    height, width = torch.randint(1, 25, (2,), generator=gen).tolist()
    mask = torch.rand(height, width, generator=gen) < 0.15 * (seed % 4 + 1) / 4
    mask.view(-1)[torch.randint(0, height * width, (1,), generator=gen)] = True
    assert torch.equal(convex_hull(mask), torch.from_numpy(convex_hull_image(mask.numpy())))
    ours = erode(mask)
    theirs = torch.from_numpy(erosion(mask.numpy(), footprint_rectangle((3, 3))))
    assert torch.equal(ours, theirs)


def test_gray_feeds_the_luminance_as_dnnbrain_did():
    image = blob_image()
    found = ol.masked_image(lambda x: x.mean(dim=(1, 2, 3))[:, None], image, 0, gray=True)
    assert torch.equal(found.image[0], found.image[1])
    assert torch.equal(found.image[1], found.image[2])
    luminance = torch.from_numpy(rgb2gray(image.permute(1, 2, 0).numpy()))
    soft = found.soft
    torch.testing.assert_close(found.image[0], soft * luminance + (1 - soft) * luminance.mean())


def test_shapes_masks_keep_the_ratio_and_an_occlusion_heat_map_finds_the_object():
    model, data = zoo.shapes(), zoo.samples()
    before = ModelState.of(model)
    inside = []
    for i in (0, 1, 5, 6):
        image, label = data.images[i], int(data.labels[i])
        snapshot = tensor_state(image)
        heat = ol.occlusion(model, image, label, **zoo.DEMO_OCCLUSION)
        found = ol.masked_image(model, image, label, heat=heat)
        assert tensor_state(image) == snapshot
        assert found.kept >= 0.9 - 1e-5
        assert (found.mask <= found.region).all()
        assert found.mask.any()
        y0, x0, y1, x1 = data.boxes[i].tolist()
        inside.append(float(found.mask[y0:y1, x0:x1].sum() / found.mask.sum()))
    assert min(inside) >= 0.8
    assert_untouched(model, before)


IMAGE = blob_image(12)
MODEL = lambda x: x.mean(dim=(1, 2, 3))[:, None]  # noqa: E731


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": torch.rand(2, 3, 12, 12)}, r"\(image\): expected one image"),
        ({"heat": torch.rand(6, 6)}, r"\(heat\).*\[12, 12\].*upsample"),
        ({"heat": torch.ones(12, 12)}, r"\(heat\).*constant"),
        ({"heat": torch.zeros(12, 12, dtype=torch.long)}, r"\(heat\).*floating"),
        ({"threshold": -1.0}, r"\(threshold\)"),
        ({"sigma": float("nan")}, r"\(sigma\)"),
        ({"keep": 0}, r"\(keep\)"),
        ({"keep": 2.0}, r"\(keep\)"),
        ({"max_steps": -1}, r"\(max_steps\)"),
        ({"max_steps": 2.5}, r"\(max_steps\)"),
        ({"gray": 1}, r"\(gray\)"),
        ({"fill": ol.fills.uniform()}, r"\(fill\)"),
        ({"fill": "median"}, r"\(fill\)"),
        ({"batch_size": -2}, r"\(batch_size\)"),
        ({"target": 5}, r"\(target\)"),
        ({"model_fn": lambda x: -MODEL(x)}, r"\(target\).*<= 0"),
    ],
)
def test_bad_input_raises_occlens_error(kwargs, match):
    call = {"model_fn": MODEL, "image": IMAGE, "target": 0, **kwargs}
    with pytest.raises(ol.OcclensError, match=r"^masked_image" + match):
        ol.masked_image(call.pop("model_fn"), call.pop("image"), call.pop("target"), **call)


def test_a_constant_image_has_no_salient_region():
    with pytest.raises(ol.OcclensError, match=r"masked_image\(heat\).*no pixel stands out"):
        ol.masked_image(MODEL, torch.ones(3, 8, 8), 0)
