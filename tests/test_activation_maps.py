"""upsample_activation: DNNBrain's UpsamplingActivationMapping, checked against a per-image numpy
reference (F.interpolate one map at a time, np.percentile with its default linear rule, np.clip),
batch == loop, shapes, errors, and a model left untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _state import ModelState, assert_untouched
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import occlens as ol
from occlens._activation_maps import MODES, upsample_activation


def conv_net(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.double().eval()


NET = conv_net()


def images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(
        n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def dnnbrain(model, image, channel, size, mode, threshold, below):
    """DNNBrain's compute(): one image, F.interpolate, np.percentile(100 p), np.clip (indexing
    [0, 0] where DNNBrain squeezes, which would also drop a size-1 side)."""
    with torch.no_grad():
        act = model(image[None])[:, channel : channel + 1]
    corners = False if mode in ("bilinear", "bicubic") else None
    up = np.asarray(F.interpolate(act, size=size, mode=mode, align_corners=corners))[0, 0]
    if threshold is not None:
        thr = np.percentile(up, threshold * 100)
        up = np.clip(up, thr, None) if below == "clip" else np.where(up < thr, 0.0, up)
    return torch.from_numpy(np.asarray(up, dtype=np.float64))


@given(
    n=st.integers(1, 3),
    h=st.integers(7, 16),
    w=st.integers(7, 16),
    seed=st.integers(0, 1000),
    channel=st.integers(0, 3),
    size=st.none() | st.tuples(st.integers(1, 20), st.integers(1, 20)),
    mode=st.sampled_from(MODES),
    threshold=st.none() | st.floats(0, 1) | st.sampled_from([0.0, 0.58, 0.68, 1.0]),
    below=st.sampled_from(["clip", "zero"]),
)
def test_batch_equals_per_image_dnnbrain_reference(
    n, h, w, seed, channel, size, mode, threshold, below
):
    x = images(n, h, w, seed)
    options = dict(size=size, mode=mode, threshold=threshold, below=below)
    heat = upsample_activation(NET, x, channel, **options)
    target = size or (h, w)
    assert heat.shape == (n, *target) and heat.dtype == torch.float64
    for i in range(n):
        expected = dnnbrain(NET, x[i], channel, target, mode, threshold, below)
        assert expected.shape == heat[i].shape
        assert torch.allclose(heat[i], expected, rtol=1e-12, atol=1e-12)
        single = upsample_activation(NET, x[i], channel, **options)
        assert single.shape == tuple(target)
        assert torch.allclose(single, heat[i], rtol=1e-12, atol=1e-12)


def test_nearest_blocks_and_bicubic_default_closed_form():
    fmap = nn.Identity()
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # one channel, 2 x 2: the map is the image
    up = upsample_activation(fmap, x, 0, size=4, mode="nearest")
    assert torch.equal(
        up,
        torch.tensor([1.0, 2.0, 3.0, 4.0])
        .reshape(2, 2)
        .repeat_interleave(2, 0)
        .repeat_interleave(2, 1),
    )
    cubic = upsample_activation(fmap, x, 0, size=(4, 4))
    expected = F.interpolate(x[None], size=(4, 4), mode="bicubic", align_corners=False)[0, 0]
    assert torch.equal(cubic, expected)
    assert cubic.max() > 4.0  # bicubic overshoots, and DNNBrain does not clamp it


def test_threshold_semantics():
    fmap = nn.Identity()
    x = torch.arange(16.0).reshape(1, 4, 4)  # percentiles of 0..15: the 100p-th is 15 p
    clipped = upsample_activation(fmap, x, 0, mode="nearest", threshold=0.58)
    assert torch.allclose(clipped, torch.clamp(x[0], min=15 * 0.58))
    zeroed = upsample_activation(fmap, x, 0, mode="nearest", threshold=0.58, below="zero")
    assert torch.equal(zeroed, torch.where(x[0] < 15 * 0.58, 0.0, x[0]))
    assert torch.equal(upsample_activation(fmap, x, 0, mode="nearest", threshold=0.0), x[0])
    top = upsample_activation(fmap, x, 0, mode="nearest", threshold=1.0, below="zero")
    assert top.count_nonzero() == 1 and top[3, 3] == 15.0


def test_percentile_is_per_image():
    fmap = nn.Identity()
    x = torch.stack([torch.arange(16.0), 100 + torch.arange(16.0)]).reshape(2, 1, 4, 4)
    heat = upsample_activation(fmap, x, 0, mode="nearest", threshold=0.5, below="zero")
    assert heat.count_nonzero() == 16  # 8 per image, not all of the second image
    assert torch.equal(heat[1] > 0, heat[0] > 0)


def test_with_occlens_layer_on_a_real_network():
    model = ol.testing.tiny_cnn(key=1)
    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    heat = upsample_activation(ol.layer(model, "features"), x, 7, threshold=0.68)
    assert heat.shape == (2, 16, 20) and heat.dtype == torch.float32
    with torch.no_grad():
        act = ol.layer(model, "features")(x)[:, 7:8]
    up = F.interpolate(act, size=(16, 20), mode="bicubic", align_corners=False)[:, 0]
    for i in range(2):
        level = np.percentile(up[i].numpy(), 68.0)
        assert torch.allclose(heat[i], up[i].clamp(min=float(level)), atol=1e-6)


# --- purity ------------------------------------------------------------------------------------


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    net(torch.rand(4, 3, 8, 8))
    return net.eval()


def test_model_untouched():
    net = bn_net()
    before = ModelState.of(net)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    upsample_activation(ol.layer(net, "2"), x, 1, threshold=0.5)
    assert_untouched(net, before)
    assert x.grad is None


def test_model_untouched_after_an_exception_inside_it():
    net = bn_net()

    def hook(module, args, output):
        raise RuntimeError("boom")

    handle = net[1].register_forward_hook(hook)
    try:
        before = ModelState.of(net)
        with pytest.raises(ol.OcclensError, match=r"upsample_activation\(model_fn\): .*boom"):
            upsample_activation(net, torch.rand(3, 8, 8), 0)
        assert_untouched(net, before)
    finally:
        handle.remove()


def test_train_mode_batchnorm_is_refused_and_mode_kept():
    net = bn_net().train()
    before = ModelState.of(net)
    with pytest.raises(ol.OcclensError, match=r"training mode.*model.eval\(\)"):
        upsample_activation(ol.layer(net, "2"), torch.rand(3, 8, 8), 0)
    assert_untouched(net, before)
    assert net.training


# --- bad input ---------------------------------------------------------------------------------

X = images(2, 9, 9)
BAD = [
    ("channel range", dict(channel=4), r"\(channel\): channel 4 out of range .* 0..3"),
    ("channel negative", dict(channel=-1), r"\(channel\): got -1; .*0-based"),
    ("channel bool", dict(channel=True), r"\(channel\): got True"),
    ("channel tensor", dict(channel=torch.tensor(1)), r"\(channel\): got Tensor"),
    (
        "threshold high",
        dict(threshold=1.5),
        r"\(threshold\): got 1.5; pass a fraction p in \[0, 1\]",
    ),
    ("threshold low", dict(threshold=-0.1), r"\(threshold\): got -0.1"),
    ("threshold percent", dict(threshold=58), r"\(threshold\): got 58; .*0.58 for the 58th"),
    ("threshold str", dict(threshold="0.5"), r"\(threshold\): got '0.5'"),
    ("threshold bool", dict(threshold=True), r"\(threshold\): got True"),
    ("threshold nan", dict(threshold=float("nan")), r"\(threshold\): got nan"),
    ("mode", dict(mode="bilinar"), r"\(mode\): got 'bilinar' \(close: 'bilinear'"),
    ("mode linear", dict(mode="linear"), r"\(mode\): got 'linear'"),
    ("below", dict(below="mask"), r"\(below\): got 'mask'.*'clip', 'zero'"),
    ("size zero", dict(size=0), r"\(size\).*at least 1"),
    ("size triple", dict(size=(1, 2, 3)), r"\(size\)"),
    ("x 2-d", dict(x=X[0, 0]), r"\(x\): expected an image"),
    ("x int", dict(x=X.long()), r"\(x\): expected a floating-point image"),
    ("x nan", dict(x=X.clone().fill_(float("nan"))), r"\(x\): .*NaN"),
    ("x float32", dict(x=X.float()), r"\(x\): the input is .* float32 but"),
    (
        "logits",
        dict(model=lambda x: x.flatten(1)),
        r"\(model_fn\): .* not a feature map .*occlens.layer\(model, name\)",
    ),
    (
        "rank 3",
        dict(model=lambda x: x.flatten(2)),
        r"\(model_fn\): the model returned Tensor\[2, 3, 81\] .* not a feature map",
    ),
    ("tuple", dict(model=lambda x: (x, x)), r"\(model_fn\): the model returned a tuple"),
    ("not callable", dict(model="net"), r"\(model_fn\): expected a callable model"),
    (
        "wrong channels",
        dict(x=images(1, 9, 9)[:, :2]),
        r"\(model_fn\): the model raised RuntimeError",
    ),
]


@pytest.mark.parametrize(("options", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_raises_occlens_error(options, match):
    options = {"x": X, "channel": 0, **options}
    model = options.pop("model", NET)
    before = ModelState.of(NET)
    with pytest.raises(ol.OcclensError, match=r"^upsample_activation" + match):
        upsample_activation(model, options.pop("x"), options.pop("channel"), **options)
    assert_untouched(NET, before)
