"""top_k: a streamed running top-k equals the one-shot answer and an independent sorted() reference,
holds no past batches, breaks ties by stream index, and leaves the model untouched.

The main model has integer weights and the images integer pixels (float64), so every score is an
exact integer: batch splits cannot change a bit, and ties are common.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from _state import ModelState, assert_untouched
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import occlens as ol
from occlens import targets as T
from occlens._topk import TopK, top_k


def int_conv(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-1, 2, conv.weight.shape, generator=gen).double())
    return conv.eval()


MODEL = int_conv()


def int_images(n: int, seed: int = 0, size: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (n, 2, size, size), generator=gen).double()


def reference(model, images, channel, k, reduce, largest):
    """Scores one image at a time in plain Python; sorted() with an index tie-break."""
    rows = []
    for i, image in enumerate(images):
        fmap = model(image[None])[0, channel].detach()
        width = fmap.shape[-1]
        values = [int(v) for v in fmap.flatten().tolist()]  # exact integers
        if reduce == "min":
            key, at = min(values), values.index(min(values))
        elif reduce == "max":
            key, at = max(values), values.index(max(values))
        else:  # mean: rank by the exact sum, report the argmax
            key, at = sum(values), values.index(max(values))
        rows.append((key, i, divmod(at, width), len(values)))
    rows.sort(key=lambda r: (-r[0] if largest else r[0], r[1]))
    return rows[:k]


def check_against(result: TopK, rows, reduce):
    assert isinstance(result, TopK)
    assert result.indices.dtype == torch.long and result.locations.dtype == torch.long
    assert result.indices.tolist() == [r[1] for r in rows]
    assert result.locations.tolist() == [list(r[2]) for r in rows]
    expected = [r[0] / r[3] if reduce == "mean" else float(r[0]) for r in rows]
    assert torch.allclose(result.scores, torch.tensor(expected, dtype=torch.float64))


def split(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(torch.split(x, sizes))


@st.composite
def problems(draw):
    n = draw(st.integers(1, 10))
    sizes, left = [], n
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    return dict(
        x=int_images(n, seed=draw(st.integers(0, 10_000)), size=draw(st.integers(3, 5))),
        sizes=sizes,
        k=draw(st.integers(1, n)),
        channel=draw(st.integers(0, 2)),
        reduce=draw(st.sampled_from(["max", "mean", "min"])),
        largest=draw(st.booleans()),
        batch_size=draw(st.none() | st.integers(1, 4)),
    )


@given(problems())
def test_stream_equals_tensor_equals_sorted_reference(p):
    options = dict(reduce=p["reduce"], largest=p["largest"])
    whole = top_k(MODEL, p["x"], p["channel"], p["k"], batch_size=p["batch_size"], **options)
    streamed = top_k(MODEL, split(p["x"], p["sizes"]), p["channel"], p["k"], **options)
    rechunked = top_k(
        MODEL, iter(split(p["x"], p["sizes"])), p["channel"], p["k"], batch_size=2, **options
    )
    rows = reference(MODEL, p["x"], p["channel"], p["k"], p["reduce"], p["largest"])
    for result in (whole, streamed, rechunked):
        check_against(result, rows, p["reduce"])
        assert torch.equal(result.scores, whole.scores)


@given(problems())
def test_default_reduce_is_max_for_top_and_min_for_bottom(p):
    x, c, k = p["x"], p["channel"], p["k"]
    for largest, reduce in ((True, "max"), (False, "min")):
        got = top_k(MODEL, x, c, k, largest=largest)
        check_against(got, reference(MODEL, x, c, k, reduce, largest), reduce)


def value_model(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1]  # a one-channel "feature map": the first input channel


def constant_images(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 3)


def test_ties_go_to_the_lowest_stream_index():
    x = constant_images([1, 3, 3, 2, 3, 1, 3])
    for source in (x, split(x, [1, 2, 3, 1]), split(x, [7]), list(x)):
        best = top_k(value_model, source, 0, 3)
        assert best.indices.tolist() == [1, 2, 4]
        worst = top_k(value_model, source, 0, 3, largest=False)
        assert worst.indices.tolist() == [0, 5, 3]
        assert worst.scores.tolist() == [1.0, 1.0, 2.0]
    same = constant_images([5.0] * 9)
    for largest in (True, False):
        got = top_k(value_model, split(same, [4, 1, 4]), 0, 9, largest=largest)
        assert got.indices.tolist() == list(range(9))
        assert got.locations.tolist() == [[0, 0]] * 9  # first argmax in row-major order


def test_bottom_k_by_spatial_min_with_argmin_location():
    x = torch.zeros(3, 1, 3, 4)
    x[0, 0, 2, 3] = -5.0  # lowest minimum
    x[1, 0, 1, 2] = -1.0
    x[2, 0, 0, 1], x[2, 0, 2, 2] = -3.0, 9.0  # high max, middle min
    worst = top_k(value_model, x, 0, 3, largest=False)
    assert worst.indices.tolist() == [0, 2, 1]
    assert worst.scores.tolist() == [-5.0, -3.0, -1.0]
    assert worst.locations.tolist() == [[2, 3], [0, 1], [1, 2]]
    by_max = top_k(value_model, x, 0, 3, largest=False, reduce="max")
    assert by_max.indices.tolist() == [0, 1, 2]  # max 0, 0, 9: ties by index
    assert by_max.locations.tolist() == [[0, 0], [0, 0], [2, 2]]


def test_peak_locations_equal_an_independent_argmax_on_a_real_network():
    model = ol.testing.tiny_cnn(key=3)
    conv = ol.layer(model, "features")
    x = torch.rand(11, 3, 12, 14, generator=torch.Generator().manual_seed(0))
    got = top_k(conv, DataLoader(TensorDataset(x, torch.arange(11)), batch_size=4), 5, 4)
    with torch.no_grad():
        fmaps = conv(x)[:, 5]
    for index, score, (y, xx) in zip(got.indices, got.scores, got.locations, strict=True):
        fmap = fmaps[index]
        assert float(score) == pytest.approx(float(fmap.max()), rel=1e-6)
        flat = max(range(fmap.numel()), key=lambda i: float(fmap.flatten()[i]))
        assert (int(y), int(xx)) == divmod(flat, fmap.shape[-1])
    assert got.indices.tolist() == fmaps.flatten(1).amax(1).argsort(descending=True)[:4].tolist()


def test_targets_from_occlens_targets():
    x = int_images(8, seed=4)
    with torch.no_grad():
        out = MODEL(x)
    mean = top_k(MODEL, x, T.channel(1, reduce="mean"), 3)
    assert torch.equal(mean.indices, top_k(MODEL, x, 1, 3, reduce="mean").indices)
    assert torch.equal(mean.locations, top_k(MODEL, x, 1, 3, reduce="mean").locations)
    peak = top_k(MODEL, x, T.peak(2), 4)
    assert torch.equal(peak.indices, top_k(MODEL, x, 2, 4).indices)
    assert torch.equal(peak.locations, top_k(MODEL, x, 2, 4).locations)
    unit = top_k(MODEL, x, T.unit(0, 1, 3), 8)
    check = sorted(range(8), key=lambda i: (-float(out[i, 0, 1, 3]), i))
    assert unit.indices.tolist() == check
    assert unit.locations.tolist() == [[1, 3]] * 8
    custom = top_k(MODEL, split(x, [3, 5]), lambda o: o[:, 0].sum(dim=(1, 2)), 2, largest=False)
    sums = [float(out[i, 0].sum()) for i in range(8)]
    assert custom.indices.tolist() == sorted(range(8), key=lambda i: (sums[i], i))[:2]
    assert custom.locations.tolist() == [[-1, -1]] * 2


def test_class_scores_have_no_location():
    model = ol.testing.tiny_cnn(num_classes=4, key=2)
    x = torch.rand(9, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
    got = top_k(model, x, 3, 5)
    expected = sorted(range(9), key=lambda i: (-float(logits[i, 3]), i))[:5]
    assert got.indices.tolist() == expected
    assert torch.allclose(got.scores, logits[expected, 3], atol=1e-6)
    assert got.locations.tolist() == [[-1, -1]] * 5
    prob = top_k(model, TensorDataset(x), T.prob(3), 5, largest=False)
    probs = logits.softmax(1)[:, 3]
    assert prob.indices.tolist() == sorted(range(9), key=lambda i: (float(probs[i]), i))[:5]


def test_dataset_and_dataloader_streams_equal_the_tensor():
    x = int_images(10, seed=7)
    labels = torch.arange(10)
    expected = top_k(MODEL, x, 1, 4)
    for source in (
        DataLoader(TensorDataset(x, labels), batch_size=3),  # [images, labels] lists
        TensorDataset(x, labels),  # (image [C, H, W], label) tuples, iterated by __getitem__
        (b for b in split(x, [2, 8])),
        [(b, "meta") for b in split(x, [5, 5])],
    ):
        got = top_k(MODEL, source, 1, 4)
        assert torch.equal(got.indices, expected.indices)
        assert torch.equal(got.scores, expected.scores)
        assert torch.equal(got.locations, expected.locations)


def test_batch_size_caps_every_model_call():
    calls = []

    def counting(x):
        calls.append(x.shape[0])
        return MODEL(x)

    x = int_images(7)
    top_k(counting, x, 0, 2, batch_size=3)
    assert calls == [3, 3, 1]
    calls.clear()
    top_k(counting, split(x, [5, 2]), 0, 2, batch_size=2)
    assert calls == [2, 2, 1, 2]
    calls.clear()
    top_k(counting, split(x, [5, 2]), 0, 2)
    assert calls == [5, 2]


def test_no_past_batch_is_kept_alive():
    """Each yielded batch is tracked by a weakref: at most the current and the next are alive."""
    alive: list[weakref.ref] = []
    most = 0

    def stream(n):
        nonlocal most
        for i in range(n):
            batch = int_images(3, seed=i)
            alive.append(weakref.ref(batch))
            most = max(most, sum(ref() is not None for ref in alive))
            yield (batch, torch.zeros(3))

    got = top_k(MODEL, stream(200), 0, 5)
    assert got.indices.shape == (5,)
    assert most <= 2


def test_live_tensors_stay_flat_as_the_stream_grows():
    counts = []

    def stream(n):
        for i in range(n):
            if i in (20, 100, 300):
                gc.collect()
                counts.append(sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()))
            yield int_images(4, seed=i)

    top_k(MODEL, stream(301), 2, 10, largest=False)
    assert counts[2] <= counts[0] + 2, counts


def test_progress_bar_runs(capsys):
    x = int_images(6)
    expected = top_k(MODEL, x, 0, 2)
    for source in (x, split(x, [3, 3]), iter(split(x, [3, 3]))):
        got = top_k(MODEL, source, 0, 2, progress=True)
        assert torch.equal(got.indices, expected.indices)
    capsys.readouterr()


# --- purity ------------------------------------------------------------------------------------


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
    net(torch.rand(4, 3, 8, 8))  # non-trivial running statistics
    return net.eval()


def test_model_untouched():
    net = bn_net()
    before = ModelState.of(net)
    x = torch.rand(6, 3, 8, 8, requires_grad=True)
    top_k(net, x, 1, 3)
    top_k(ol.layer(net, "2"), split(x.detach(), [2, 4]), 0, 2, largest=False)
    assert_untouched(net, before)
    assert x.grad is None


def test_model_untouched_after_an_exception_inside_it():
    net = bn_net()
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    handle = net[2].register_forward_hook(hook)
    try:
        before = ModelState.of(net)
        with pytest.raises(ol.OcclensError, match=r"top_k\(model_fn\): the model raised .*boom"):
            top_k(net, split(torch.rand(6, 3, 8, 8), [3, 3]), 0, 2)
        assert_untouched(net, before)
    finally:
        handle.remove()


def test_train_mode_batchnorm_is_refused_and_mode_kept():
    net = bn_net().train()
    before = ModelState.of(net)
    with pytest.raises(ol.OcclensError, match=r"top_k\(model_fn\): .* training mode.*eval\(\)"):
        top_k(net, torch.rand(4, 3, 8, 8), 0, 2)
    assert_untouched(net, before)
    assert net.training


# --- bad input ---------------------------------------------------------------------------------

X = int_images(4)  # image sums 54, 64, 49, 52


def nan_at_2(x):
    return MODEL(x) * torch.where(x.sum((1, 2, 3)) == 49, torch.nan, 1.0)[:, None, None, None]


NAN = X.clone()
NAN[1, 0, 0, 0] = float("nan")

BAD = [
    ("k zero", dict(k=0), r"top_k\(k\): got 0; pass a whole number k >= 1"),
    ("k float", dict(k=1.5), r"top_k\(k\): got 1.5"),
    ("k bool", dict(k=True), r"top_k\(k\): got True"),
    ("k above N", dict(k=5), r"top_k\(k\): k=5 but images holds 4"),
    ("k above stream", dict(k=5, images=split(X, [1, 3])), r"k=5 but the stream held only 4"),
    ("empty stream", dict(images=[]), r"top_k\(k\): k=2 but the stream held only 0 image"),
    ("reduce", dict(reduce="median"), r"top_k\(reduce\): got 'median'"),
    ("reduce with target", dict(target=T.peak(0), reduce="mean"), r"set the reduction in"),
    ("reduce on logits", dict(model=lambda x: x.flatten(1), reduce="max"), r"no space to reduce"),
    ("largest", dict(largest="yes"), r"top_k\(largest\): got 'yes'"),
    ("progress", dict(progress=1), r"top_k\(progress\): got 1"),
    ("batch_size", dict(batch_size=0), r"top_k\(batch_size\): got 0"),
    ("one image", dict(images=X[0]), r"top_k\(images\): expected a batch .* one image"),
    ("5-d", dict(images=X[None]), r"top_k\(images\): expected an image .* or a batch"),
    ("int pixels", dict(images=X.long()), r"top_k\(images\): expected a floating-point image"),
    ("nan", dict(images=NAN), r"top_k\(images\): .* holds 1 NaN/Inf"),
    ("nan in stream", dict(images=split(NAN, [1, 3])), r"top_k\(images\[1\]\): .* NaN/Inf"),
    ("string", dict(images="images/"), r"top_k\(images\): expected images, got 'images/'"),
    ("dict", dict(images={"x": X}), r"top_k\(images\): expected images, got a dict"),
    ("number", dict(images=3), r"top_k\(images\): expected images, got 3"),
    ("stream of str", dict(images=["a.png"]), r"top_k\(images\[0\]\): the stream yielded 'a.png'"),
    ("channel range", dict(target=3), r"top_k\(target\): channel 3 out of range .* 0..2"),
    ("negative", dict(target=-1), r"top_k\(target\): got -1; indices are 0-based"),
    ("bool target", dict(target=True), r"top_k\(target\)"),
    ("tensor target", dict(target=torch.tensor([0, 1])), r"holds per-image indices"),
    ("list target", dict(target=[0, 1]), r"top_k\(target\): Logit.* holds per-image indices"),
    ("per-image T", dict(target=T.channel(torch.tensor([0, 1]))), r"holds per-image indices"),
    ("T out of range", dict(target=T.channel(7)), r"top_k\(target\): .*channel out of range"),
    ("rank 3 output", dict(model=lambda x: x.flatten(2)), r"an int target needs a feature map"),
    ("bad custom", dict(target=lambda out: out[:, 0]), r"top_k\(target\): the target returned"),
    ("raising custom", dict(target=lambda out: out[:, 9]), r"the target raised IndexError"),
    ("float32 input", dict(images=X.float()), r"top_k\(images\): the input is .* float32 but"),
    ("float32 batch", dict(images=[X, X.float()]), r"top_k\(images\[1\]\): the input is"),
    ("nan scores", dict(model=nan_at_2, images=split(X, [2, 2])), r"score of image 2 is NaN"),
    ("tuple output", dict(model=lambda x: (x, x)), r"returned a tuple, not a tensor"),
]


@pytest.mark.parametrize(("options", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_occlens_error(options, match):
    options = {"images": X, "target": 0, "k": 2, **options}
    model = options.pop("model", MODEL)
    before = ModelState.of(MODEL)
    with pytest.raises(ol.OcclensError, match=match):
        top_k(model, options.pop("images"), options.pop("target"), options.pop("k"), **options)
    assert_untouched(MODEL, before)
