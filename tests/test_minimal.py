"""minimal_image: exact parcels on analytic models, batched search equal to plain loops, the
shapes model's minimal images on its objects, PCA/ICA components, errors, and an untouched model.
"""

from __future__ import annotations

import sys

import pytest
import torch
from _state import ModelState, assert_untouched, tensor_state
from torch import nn

import occlens as ol
from occlens import zoo
from occlens._components import decompose, fastica

skimage = pytest.importorskip("skimage")


def region_model(region: torch.Tensor):
    """Score = the sum of the pixels inside `region` (all channels)."""

    def model(x: torch.Tensor) -> torch.Tensor:
        return (x * region.to(x.dtype)).sum(dim=(1, 2, 3))[:, None]

    return model


def blocks(size: int = 16, block: int = 4) -> torch.Tensor:
    """A label map of ``block x block`` squares, numbered row by row."""
    n = size // block
    return torch.arange(n * n).reshape(n, n).repeat_interleave(block, 0).repeat_interleave(block, 1)


def positive_image(size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 + 0.5 * torch.rand(3, size, size, generator=gen, dtype=torch.float64)


# -- analytic models: exactly the region's parcels --------------------------------------------


@pytest.mark.parametrize("search", ["prefix", "greedy"])
@pytest.mark.parametrize("rank", ["drop", "alone"])
def test_label_map_returns_exactly_the_region_parcels(search, rank):
    labels = blocks() * 10 + 7  # sparse labels: results speak the user's label values
    region = torch.isin(labels, torch.tensor([17, 67, 77]))
    found = ol.minimal_image(
        region_model(region),
        positive_image(),
        0,
        segments=labels,
        keep=1.0,
        fill=0.0,
        search=search,
        rank=rank,
    )
    assert sorted(found.parcels.tolist()) == [17, 67, 77]
    assert torch.equal(found.mask, region)
    assert torch.equal(found.labels, labels)
    assert found.kept == pytest.approx(1.0)
    assert sorted(found.order[:3].tolist()) == [17, 67, 77]
    assert (found.effects[3:] == 0).all()
    image = positive_image()
    assert torch.equal(found.image, torch.where(region, image, torch.zeros(())))


def test_keep_stops_at_the_fraction():
    labels = blocks()
    region = torch.isin(labels, torch.tensor([0, 1, 2, 3]))
    image = torch.ones(3, 16, 16, dtype=torch.float64)
    image[:, :4, :4] = 4.0  # parcel 0 holds 4/7 of the score, 1..3 hold 1/7 each
    found = ol.minimal_image(region_model(region), image, 0, segments=labels, keep=0.7, fill=0.0)
    assert found.parcels[0].item() == 0
    assert len(found.parcels) == 2  # 4/7 < 0.7 <= 5/7
    assert found.kept == pytest.approx(5 / 7)
    assert found.curve[:3].tolist() == pytest.approx([0.0, 4 * 48, 5 * 48])


def test_slic_on_a_constructed_image_returns_the_parcels_of_the_object():
    image = torch.zeros(3, 32, 32, dtype=torch.float64)
    image[2] = 0.8  # blue ground
    image[:, 8:20, 10:26] = torch.tensor([0.9, 0.1, 0.1], dtype=torch.float64)[:, None, None]
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:20, 10:26] = True
    found = ol.minimal_image(region_model(region), image, 0, segments="slic", keep=1.0, fill=0.0)
    touching = set(found.labels[region].unique().tolist())
    assert set(found.parcels.tolist()) == touching
    assert (found.mask | ~region).all()  # the object is all there
    assert (found.mask & ~region).sum() <= 0.1 * region.sum()  # and little else: slic follows it
    # with slic's default of 250 parcels, the object is many small ones
    assert len(touching) > 10


def test_segmenters_get_dnnbrain_defaults_by_keyword(monkeypatch):
    from skimage import segmentation

    seen = {}
    for name in ("slic", "felzenszwalb", "quickshift"):
        original = getattr(segmentation, name)

        def spy(pixels, *args, _name=name, _original=original, **kwargs):
            assert not args, "segmenters must get keyword arguments"
            seen[_name] = kwargs
            return _original(pixels, **kwargs)

        monkeypatch.setattr(segmentation, name, spy)
    image = positive_image(24).float().clamp(0, 1)
    model = region_model(torch.ones(24, 24, dtype=torch.bool))
    for name in ("slic", "felzenszwalb", "quickshift"):
        ol.minimal_image(model, image, 0, segments=name, key=0)
    assert seen["slic"] == {"n_segments": 250, "compactness": 10.0, "sigma": 1.0}
    assert seen["felzenszwalb"] == {"scale": 100.0, "sigma": 0.5, "min_size": 50}
    rng = seen["quickshift"].pop("rng")
    assert isinstance(rng, int)
    assert seen["quickshift"] == {"kernel_size": 3, "max_dist": 6.0, "ratio": 0.5}
    ol.minimal_image(model, image, 0, segments="slic", options={"n_segments": 9, "sigma": 0.0})
    assert seen["slic"] == {"n_segments": 9, "compactness": 10.0, "sigma": 0.0}


def test_quickshift_draws_its_tie_breaking_from_the_key():
    image = positive_image(24).float().clamp(0, 1)
    model = region_model(torch.ones(24, 24, dtype=torch.bool))
    a = ol.minimal_image(model, image, 0, segments="quickshift", key=3)
    b = ol.minimal_image(
        model, image, 0, segments="quickshift", key=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a.labels, b.labels)
    with pytest.raises(ol.OcclensError, match=r"minimal_image\(key\).*quickshift"):
        ol.minimal_image(model, image, 0, segments="quickshift")


# -- batched search equals a plain loop -----------------------------------------------------


def small_net() -> nn.Module:
    torch.manual_seed(0)  # test-local weights; occlens itself never reads global RNG
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    return net.double().eval()


def loop_score(model, image, target) -> float:
    with torch.no_grad():
        return float(model(image[None])[0, target])


def loop_minimal(model, image, target, labels, fill, keep, search, rank):
    """The search written plainly: one image per model call, Python lists."""
    ids = sorted(set(labels.flatten().tolist()))

    def show(chosen):
        keep_pixels = torch.zeros_like(labels, dtype=torch.bool)
        for parcel in chosen:
            keep_pixels |= labels == parcel
        return torch.where(keep_pixels, image, fill)

    clean = loop_score(model, image, target)
    if rank == "alone":
        effect = {p: loop_score(model, show([p]), target) for p in ids}
    else:
        effect = {
            p: clean - loop_score(model, show([q for q in ids if q != p]), target) for p in ids
        }
    order = sorted(ids, key=lambda p: (-effect[p], ids.index(p)))
    goal = keep * clean - 1e-5 * abs(clean)
    if search == "prefix":
        curve = [loop_score(model, show(order[:k]), target) for k in range(len(ids) + 1)]
        size = next(k for k, s in enumerate(curve) if s >= goal)
        return order[:size], curve, order
    chosen, curve = [], [loop_score(model, show([]), target)]
    while curve[-1] < goal:
        best, best_score = None, None
        for p in order:
            if p in chosen:
                continue
            s = loop_score(model, show([*chosen, p]), target)
            if best_score is None or s > best_score:
                best, best_score = p, s
        chosen.append(best)
        curve.append(best_score)
    return chosen, curve, order


@pytest.mark.parametrize("search", ["prefix", "greedy"])
@pytest.mark.parametrize("rank", ["drop", "alone"])
@pytest.mark.parametrize("batch_size", [1, 5, None])
def test_batched_search_equals_a_plain_loop(search, rank, batch_size):
    model = small_net()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, 12, 12, generator=gen, dtype=torch.float64)
    labels = blocks(12, 3)
    with torch.no_grad():
        target = int(model(image[None]).argmax())
    fill = image.mean(dim=(1, 2), keepdim=True)
    chosen, curve, order = loop_minimal(model, image, target, labels, fill, 0.95, search, rank)
    found = ol.minimal_image(
        model,
        image,
        target,
        segments=labels,
        keep=0.95,
        search=search,
        rank=rank,
        batch_size=batch_size,
    )
    assert found.parcels.tolist() == chosen
    assert found.order.tolist() == order
    assert found.curve.tolist() == pytest.approx(curve, rel=1e-12, abs=1e-12)
    assert found.score == pytest.approx(curve[len(chosen)], rel=1e-12)


def test_model_calls_are_batched():
    calls = []
    region = torch.isin(blocks(), torch.tensor([5]))
    inner = region_model(region)

    def model(x):
        calls.append(x.shape[0])
        return inner(x)

    ol.minimal_image(model, positive_image(), 0, segments=blocks(), keep=1.0, batch_size=8)
    assert max(calls) == 8
    assert len(calls) <= 1 + 2 + 3  # clean, 16 rankings, 17 prefixes


def test_max_parcels_caps_the_search():
    labels = blocks()
    region = labels < 8
    found = ol.minimal_image(
        region_model(region),
        positive_image(),
        0,
        segments=labels,
        search="greedy",
        max_parcels=2,
        fill=0.0,
    )
    assert len(found.parcels) == 2
    assert found.kept < 0.9
    assert len(found.curve) == 3


# -- the shapes model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    return zoo.shapes(), zoo.samples()


def inside_box(mask: torch.Tensor, box) -> float:
    y0, x0, y1, x1 = box
    return float(mask[y0:y1, x0:x1].sum() / mask.sum())


def test_shapes_minimal_images_keep_the_score_and_sit_on_the_object(shapes):
    model, data = shapes
    before = ModelState.of(model)
    fractions = []
    for i in range(0, 10, 2):
        image, label = data.images[i], int(data.labels[i])
        snapshot = tensor_state(image)
        found = ol.minimal_image(model, image, label, segments="slic")
        assert tensor_state(image) == snapshot
        assert found.kept >= 0.9 - 1e-5
        assert found.mask.float().mean() < 0.5  # smaller than the image
        fractions.append(inside_box(found.mask, data.boxes[i].tolist()))
    assert min(fractions) >= 0.5
    assert sum(fractions) / len(fractions) >= 0.8
    assert_untouched(model, before)


def test_shapes_felzenszwalb_greedy_finds_the_object_region(shapes):
    model, data = shapes
    for i in (0, 1, 3):
        found = ol.minimal_image(
            model, data.images[i], int(data.labels[i]), segments="felzenszwalb", search="greedy"
        )
        assert found.kept >= 0.9 - 1e-5
        assert inside_box(found.mask, data.boxes[i].tolist()) >= 0.9
        overlap = (found.mask & data.masks[i]).sum() / data.masks[i].sum()
        assert overlap >= 0.8


# -- components -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pca", "ica"])
@pytest.mark.parametrize("size", [16, 19])  # 19: padded to a whole number of patches
def test_components_add_up_to_the_image(method, size):
    image = positive_image(size).float()
    parts = decompose(image, method, {"patch": 4}, "test")
    everything = parts.compose(torch.ones(1, len(parts), dtype=torch.bool))[0]
    assert everything.shape == image.shape
    torch.testing.assert_close(everything, image, atol=1e-5, rtol=0)
    nothing = parts.compose(torch.zeros(1, len(parts), dtype=torch.bool))[0]
    mean_patch = parts.mean.reshape(3, 4, 4)
    torch.testing.assert_close(nothing[:, :4, :4], mean_patch)


def test_pca_components_are_orthogonal_and_ordered_by_variance():
    parts = decompose(positive_image(16), "pca", {"patch": 4}, "test")
    gram = parts.basis @ parts.basis.T
    torch.testing.assert_close(gram, torch.eye(len(parts), dtype=gram.dtype))
    variance = parts.coef.pow(2).sum(dim=0)
    assert (variance[:-1] >= variance[1:]).all()
    assert len(decompose(positive_image(16), "pca", {"patch": 4, "n_components": 5}, "t")) == 5


def test_ica_unmixes_independent_sources():
    gen = torch.Generator().manual_seed(0)
    sources = torch.rand(5000, 3, generator=gen, dtype=torch.float64) - 0.5
    sources[:, 2] = torch.sign(sources[:, 2]) * sources[:, 2].abs() ** 3  # sparse, not uniform
    mixing = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.6, 0.1, 1.0]], dtype=torch.float64)
    mixed = sources @ mixing
    u, _, _ = torch.linalg.svd(mixed - mixed.mean(0), full_matrices=False)
    white = u * 5000**0.5
    found = white @ fastica(white).T
    corr = torch.corrcoef(torch.cat([found, sources], dim=1).T)[:3, 3:].abs()
    assert (corr.max(dim=1).values > 0.99).all()
    assert sorted(corr.argmax(dim=1).tolist()) == [0, 1, 2]


@pytest.mark.parametrize("method", ["pca", "ica"])
def test_minimal_component_image_keeps_the_score(shapes, method):
    model, data = shapes
    found = ol.minimal_image(model, data.images[1], int(data.labels[1]), segments=method)
    assert found.kept >= 0.9 - 1e-5
    assert found.mask is None and found.labels is None
    assert len(found.order) == 63  # 64 patches of 8x8: rank 63 after centring
    again = ol.minimal_image(model, data.images[1], int(data.labels[1]), segments=method)
    assert torch.equal(found.image, again.image)  # no randomness: ICA starts from the identity


# -- missing extra, bad input -------------------------------------------------------------------


def test_missing_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    model = region_model(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ol.OcclensError, match=r'segments.*pip install "occlens\[segment\]"'):
        ol.minimal_image(model, torch.rand(3, 8, 8), 0, segments="slic")
    # label maps and components need no extra
    ol.minimal_image(model, torch.rand(3, 8, 8) + 0.1, 0, segments=blocks(8, 4))
    ol.minimal_image(model, torch.rand(3, 8, 8) + 0.1, 0, segments="pca", options={"patch": 2})


MODEL = region_model(torch.ones(8, 8, dtype=torch.bool))
IMAGE = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1
LABELS = blocks(8, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": torch.rand(2, 3, 8, 8)}, r"\(image\): expected one image"),
        ({"image": torch.rand(8, 8)}, r"\(image\)"),
        ({"keep": 0.0}, r"\(keep\)"),
        ({"keep": 1.5}, r"\(keep\)"),
        ({"keep": True}, r"\(keep\)"),
        ({"search": "beam"}, r"\(search\).*'greedy'"),
        ({"rank": "max"}, r"\(rank\).*'drop'"),
        ({"segments": "watershed"}, r"\(segments\).*'slic'"),
        ({"segments": torch.zeros(8, 8)}, r"\(segments\).*integers"),
        ({"segments": torch.zeros(4, 4, dtype=torch.long)}, r"\(segments\).*\[8, 8\]"),
        ({"options": {"n": 1}}, r"\(options\).*label map"),
        ({"segments": "pca", "options": {"size": 4}}, r"\(options\).*'size'"),
        ({"segments": "pca", "options": {"patch": 0}}, r"\(options\).*patch"),
        ({"segments": "pca", "fill": 0.0}, r"\(fill\).*mean patch"),
        ({"segments": "slic", "options": {"bogus": 1}}, r"\(options\).*slic"),
        ({"segments": "slic", "options": [1]}, r"\(options\).*dict"),
        ({"fill": "median"}, r"\(fill\)"),
        ({"fill": ol.fills.uniform()}, r"\(key\).*fills.uniform"),
        ({"max_parcels": 0}, r"\(max_parcels\)"),
        ({"batch_size": 0}, r"\(batch_size\)"),
        ({"target": 3}, r"\(target\)"),
        ({"model_fn": "net"}, r"\(model_fn\)"),
    ],
)
def test_bad_input_raises_occlens_error(kwargs, match):
    call = {"model_fn": MODEL, "image": IMAGE, "target": 0, "segments": LABELS, **kwargs}
    with pytest.raises(ol.OcclensError, match=r"^minimal_image" + match):
        ol.minimal_image(call.pop("model_fn"), call.pop("image"), call.pop("target"), **call)


def test_a_score_that_is_not_positive_is_refused():
    with pytest.raises(ol.OcclensError, match=r"minimal_image\(target\): the clean score is -"):
        ol.minimal_image(lambda x: -MODEL(x), IMAGE, 0, segments=LABELS)


def test_a_constant_image_has_no_components():
    with pytest.raises(ol.OcclensError, match=r"minimal_image\(segments\).*nothing to decompose"):
        ol.minimal_image(MODEL, torch.ones(3, 8, 8), 0, segments="pca", options={"patch": 2})


def test_uniform_fill_comes_from_the_key():
    region = torch.isin(LABELS, torch.tensor([0]))
    a = ol.minimal_image(
        region_model(region), IMAGE, 0, segments=LABELS, fill=ol.fills.uniform(0, 1), key=1
    )
    b = ol.minimal_image(
        region_model(region), IMAGE, 0, segments=LABELS, fill=ol.fills.uniform(0, 1), key=1
    )
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image[:, 4:, 4:], IMAGE[:, 4:, 4:])
