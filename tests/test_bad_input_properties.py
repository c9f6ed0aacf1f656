"""Bad input, generated with hypothesis, to every public method that takes a model.

Each family of bad input (a wrong rank, an empty dimension, NaN/Inf, an integer or half image, a
mismatched target, an out-of-range index, a bad window, an unknown layer, a model that is not
callable or returns no tensor, ...) runs against every method it applies to. Every case must
raise `OcclensError` whose message starts with the call and the argument at fault, never an
AssertionError, IndexError or RuntimeError from deep inside torch, and must leave the model as
it was. A case is one (family, method) pair; `test_there_are_at_least_forty_cases` counts them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from _registry import CLASSES, LAYER, images, net
from _state import ModelState, assert_untouched
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

import occlens as ol
from occlens import targets as T

B = 2  # images per batch
FEATURES = 8  # channels of the feature map at LAYER
LAYERS = ol.layers(net())


@dataclass(frozen=True)
class Subject:
    """A public method, called with a model, an image batch and a target.

    `call` is the name its errors start with, `image` the name of its image argument.
    `feature_map`: the model is ``layer(net, LAYER)`` (the target is a channel of it).
    `per_sample`: it takes one target per image (a ``LongTensor[B]``).
    `module_only`: the model must be an ``nn.Module`` (its argument is ``model``).
    `one_image`: it takes one image ``[C, H, W]``, not batches (generated batches lose dim 0).
    `wrapper`: the model goes through this call first (``guided``), which checks it.
    `known`: families whose errors name another call or argument today, with the reason
    (strict xfail: the test fails once the library is fixed, so the mark can go).
    """

    name: str
    run: Callable[..., object]
    call: str
    image: str = "x"
    feature_map: bool = False
    per_sample: bool = True
    module_only: bool = False
    one_image: bool = False
    wrapper: str | None = None
    known: tuple[tuple[str, str], ...] = ()

    def model(self) -> Callable:
        return ol.layer(net(), LAYER) if self.feature_map else net()

    def target(self) -> object:
        return 1


SUBJECTS = (
    Subject("occlusion", lambda m, x, t: ol.occlusion(m, x, t, window=3), "occlusion"),
    Subject("saliency", lambda m, x, t: ol.saliency(m, x, t), "saliency"),
    Subject("input_x_gradient", lambda m, x, t: ol.input_x_gradient(m, x, t), "input_x_gradient"),
    Subject(
        "integrated_gradients",
        lambda m, x, t: ol.integrated_gradients(m, x, t, steps=2),
        "integrated_gradients",
    ),
    Subject(
        "smoothgrad",
        lambda m, x, t: ol.smoothgrad(n=2)(ol.saliency)(m, x, t, key=0),
        "smoothgrad",
    ),
    Subject(
        "guided", lambda m, x, t: ol.saliency(ol.guided(m), x, t), "saliency", wrapper="guided"
    ),
    Subject(
        "deconvnet",
        lambda m, x, t: ol.input_x_gradient(ol.deconvnet(m), x, t),
        "input_x_gradient",
        wrapper="deconvnet",
    ),
    Subject(
        "upsample_activation",
        lambda m, x, t: ol.upsample_activation(m, x, t),
        "upsample_activation",
        feature_map=True,
        per_sample=False,
    ),
    Subject(
        "top_k",
        lambda m, x, t: ol.top_k(m, x, t, k=1),
        "top_k",
        image="images",
        per_sample=False,
    ),
    Subject(
        "empirical_rf",
        lambda m, x, t: ol.empirical_rf(m, LAYER, t, x, k=1, key=0),
        "empirical_rf",
        image="images",
        per_sample=False,
        module_only=True,
    ),
)
PARCELS = torch.arange(9).reshape(3, 3).repeat_interleave(4, 0).repeat_interleave(4, 1)
if hasattr(ol, "masked_image"):
    SUBJECTS += (
        Subject(
            "masked_image",
            lambda m, x, t: ol.masked_image(m, x, t, max_steps=2),
            "masked_image",
            image="image",
            one_image=True,
        ),
    )
if hasattr(ol, "minimal_image"):
    SUBJECTS += (
        Subject(
            "minimal_image",
            lambda m, x, t: ol.minimal_image(m, x, t, segments=PARCELS),
            "minimal_image",
            image="image",
            one_image=True,
        ),
    )
if hasattr(ol, "maximize"):
    SUBJECTS += (
        Subject(
            "maximize", lambda m, x, t: ol.maximize(m, t, init=x, steps=1), "maximize", image="init"
        ),
    )

CASES: list[tuple[str, str]] = []  # (family, subject): every case below, for the count
KNOWN: list[tuple[str, str]] = []  # the cases marked as known violations (strict xfail)


def family(
    name: str, predicate: Callable[[Subject], bool] = lambda s: True
) -> pytest.MarkDecorator:
    """Parametrize a test over the subjects of a family, marking the known violations."""
    params = []
    for subject in SUBJECTS:
        if not predicate(subject):
            continue
        CASES.append((name, subject.name))
        reasons = [reason for fam, reason in subject.known if fam == name]
        if reasons:
            KNOWN.append((name, subject.name))
        marks = [pytest.mark.xfail(reason=reasons[0], strict=True)] if reasons else []
        params.append(pytest.param(subject, id=subject.name, marks=marks))
    return pytest.mark.parametrize("subject", params)


DEFAULT = object()


def rejects(subject: Subject, match: str, *, model=DEFAULT, x=DEFAULT, target=DEFAULT) -> None:
    """Run `subject` and require an OcclensError matching `match`, the model left untouched."""
    model = subject.model() if model is DEFAULT else model
    x = images(B) if x is DEFAULT else x
    if subject.one_image and isinstance(x, Tensor) and x.ndim == 4:
        x = x[0]
    target = subject.target() if target is DEFAULT else target
    state = ModelState.of(model) if isinstance(model, nn.Module) else None
    with pytest.raises(ol.OcclensError, match=match):
        subject.run(model, x, target)
    if state is not None:
        assert_untouched(model, state)
    assert torch._C._len_torch_function_stack() == 0


def at(subject: Subject, argument: str | None = None, call: str | None = None) -> str:
    """The start of the message: ``call(argument)``."""
    call = call or subject.call
    return rf"^{re.escape(call)}\({re.escape(argument or subject.image)}\): "


# --- the image ---------------------------------------------------------------------------------

small = st.integers(1, 4)


@family("rank")
@given(shape=st.lists(small, min_size=0, max_size=6).filter(lambda s: len(s) not in (3, 4)))
def test_wrong_rank(subject, shape):
    x = torch.rand(shape)
    rejects(subject, at(subject) + r"expected an image \[C, H, W\] or a batch", x=x)


@family("empty")
@given(shape=st.lists(st.integers(0, 3), min_size=4, max_size=4).filter(lambda s: 0 in s))
def test_empty_dimension(subject, shape):
    assume(not subject.one_image or shape[0] > 0)
    rejects(subject, at(subject) + r"the input is empty", x=torch.rand(shape))


@family("nan")
@given(
    where=st.lists(st.integers(0, 3 * 12 * 12 - 1), min_size=1, max_size=20, unique=True),
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
)
def test_nan_or_inf(subject, where, value):
    x = images(B)
    x.view(-1)[torch.tensor(where)] = value
    shape = r"3, 12, 12" if subject.one_image else r"2, 3, 12, 12"
    rejects(subject, at(subject) + rf"Tensor\[{shape}\] float32 holds {len(where)} NaN/Inf", x=x)


@family("dtype")
@given(
    dtype=st.sampled_from(
        [
            torch.uint8,
            torch.int8,
            torch.int16,
            torch.int32,
            torch.int64,
            torch.bool,
            torch.complex64,
        ]
    )
)
def test_integer_bool_or_complex_image(subject, dtype):
    x = (images(B) * 255).to(dtype)
    name = str(dtype).removeprefix("torch.")
    rejects(subject, at(subject) + rf"expected a floating-point image, got .* {name}", x=x)


@family("half")
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_on_the_cpu(subject, dtype):
    name = str(dtype).removeprefix("torch.")
    rejects(subject, at(subject) + rf".*{name} on the CPU", x=images(B).to(dtype))


@family("not a tensor", lambda s: s.name != "top_k")  # top_k streams any iterable
@given(
    x=st.one_of(
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.lists(st.floats(0, 1), max_size=3),
        st.just(np.zeros((3, 12, 12), dtype=np.float32)),
    )
)
def test_not_a_tensor(subject, x):
    rejects(subject, at(subject) + r"(expected an image tensor, )?got ", x=x)


@family("stream element", lambda s: s.name == "top_k")
@given(element=st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.none()))
def test_top_k_stream_of_non_images(subject, element):
    rejects(subject, r"^top_k\(images\[1\]\): the stream yielded", x=[images(1), element])


@family("float64")
def test_float64_image_for_a_float32_model(subject):
    rejects(subject, at(subject) + r".*float64.*float32", x=images(B).double())


@family("channels")
@given(channels=st.integers(1, 6).filter(lambda c: c != 3))
def test_wrong_number_of_channels(subject, channels):
    x = torch.rand(B, channels, 12, 12)
    argument = "model" if subject.module_only else "model_fn"
    rejects(subject, at(subject, argument) + r"the model raised RuntimeError on the input", x=x)


# --- the target ---------------------------------------------------------------------------------


@family("target length", lambda s: s.per_sample)
@given(n=st.integers(1, 6).filter(lambda n: n != B))
def test_one_target_per_image(subject, n):
    batch = 1 if subject.one_image else B
    assume(n != batch)
    target = torch.arange(n) % CLASSES
    rejects(
        subject,
        at(subject, "target") + rf".* shape \[{n}\] but the batch holds {batch} sample",
        target=target,
    )


@family("out-of-range")
@given(index=st.one_of(st.integers(max_value=-1), st.integers(min_value=FEATURES, max_value=2**62)))
def test_index_out_of_range(subject, index):
    argument = "channel" if subject.name in TAKES_TARGET else "target"
    problem = r"(out of range|got -\d+|non-negative)"
    rejects(subject, at(subject, argument) + rf".*{problem}", target=index)


@family("target type")
@given(
    target=st.one_of(
        st.floats(allow_nan=True),
        st.text(max_size=4),
        st.booleans(),
        st.just(torch.tensor([0.5, 1.0])),
        st.just(torch.zeros(2, 2, dtype=torch.long)),
        st.just(None),
    )
)
def test_target_of_the_wrong_type(subject, target):
    argument = "channel" if subject.name in TAKES_TARGET else "target"
    rejects(subject, at(subject, argument) + r"(cannot use|got)", target=target)


TAKES_TARGET = ("upsample_activation", "empirical_rf")  # these take a channel index, no target


@family("unit", lambda s: s.name not in TAKES_TARGET)
@given(
    unit=st.tuples(st.integers(0, 7), st.integers(0, 5), st.integers(0, 5)),
    axis=st.integers(0, 2),
    beyond=st.integers(0, 100),
)
def test_unit_out_of_range(subject, unit, axis, beyond):
    """A unit outside the feature map [B, 8, 6, 6] of LAYER, at any axis."""
    bad = list(unit)
    bad[axis] = (FEATURES, 6, 6)[axis] + beyond
    name = ("channel", "y", "x")[axis]
    model = ol.layer(net(), LAYER)
    rejects(subject, at(subject, "target") + rf"Unit.*: {name} out of range", model=model,
            target=T.unit(*bad))  # fmt: skip


@family("target function", lambda s: s.name not in TAKES_TARGET)
def test_target_function_that_raises(subject):
    rejects(subject, at(subject, "target") + r"the target .*raised IndexError",
            target=lambda out: out[:, 99])  # fmt: skip


@family("unit of class scores", lambda s: not s.feature_map and s.name != "empirical_rf")
def test_a_unit_target_on_class_scores(subject):
    rejects(subject, at(subject, "target") + r"Unit.* needs a model output of shape \[B, C, H, W\]",
            target=T.unit(0, 0, 0))  # fmt: skip


# --- the model ----------------------------------------------------------------------------------


@family("non-callable")
@given(
    model=st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=4),
        st.just(torch.zeros(3)),
        st.just({"model": None}),
    )
)
def test_a_model_that_is_not_callable(subject, model):
    argument = "model" if subject.module_only else "model_fn"
    start = at(subject, argument, subject.wrapper)
    rejects(subject, start + r"(expected a callable|needs an nn.Module)", model=model)


class Returns(nn.Module):
    """Wraps `Net` and returns what `wrap` makes of its output."""

    def __init__(self, wrap: Callable[[Tensor], object], feature_map: bool) -> None:
        super().__init__()
        self.net = ol.layer(net(), LAYER) if feature_map else net()
        self.wrap = wrap

    def forward(self, x: Tensor) -> object:
        return self.wrap(self.net(x))


OUTPUTS = {
    "tuple": (lambda y: (y, y), r"the model returned a tuple, not a tensor"),
    "list": (lambda y: [y], r"the model returned a list, not a tensor"),
    "dict": (lambda y: {"logits": y}, r"returned a dict.*model\(x\)\['logits'\]"),
    "None": (lambda y: None, r"the model returned None"),
    "array": (lambda y: y.detach().numpy(), r"the model returned a numpy array"),
    "scalar": (lambda y: y.sum(), r"Tensor\[\] float32, which has no batch dimension"),
    "other batch": (
        lambda y: torch.cat([y, y]),
        r"to Tensor\[[24], .*which has no batch dimension",
    ),
    "integers": (lambda y: y.argmax(1, keepdim=True), r"the model returned .* int64"),
}


@family("output", lambda s: not s.module_only)
@given(kind=st.sampled_from(sorted(OUTPUTS)))
def test_a_model_that_returns_no_score_tensor(subject, kind):
    wrap, match = OUTPUTS[kind]
    model = Returns(wrap, subject.feature_map)
    rejects(subject, at(subject, "model_fn") + ".*" + match, model=model)


@family("model ValueError", lambda s: not s.module_only)
def test_a_model_raising_a_torch_value_error(subject):
    """BatchNorm1d on a 4-D input raises ValueError inside torch."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm1d(8)).eval()
    rejects(subject, at(subject, "model_fn") + r"the model raised ValueError", model=model,
            target=0)  # fmt: skip


@family("train mode")
def test_a_train_mode_batchnorm_is_refused(subject):
    model = subject.model().train()
    rejects(subject, at(subject, "model" if subject.module_only else "model_fn")
            + r"BatchNorm2d at '(model\.)?features.1' is in training mode", model=model)  # fmt: skip
    assert model.training


# --- layers, windows, keys, chunks ----------------------------------------------------------------

LAYER_CALLS = {
    "layer": (lambda m, name: ol.layer(m, name), "layer", "name"),
    "saliency": (lambda m, name: ol.saliency(m, images(B), 1, at=name), "saliency", "at"),
    "input_x_gradient": (
        lambda m, name: ol.input_x_gradient(m, images(B), 1, at=name),
        "input_x_gradient",
        "at",
    ),
    "receptive_field": (
        lambda m, name: ol.receptive_field(m, name, 12),
        "receptive_field",
        "layer",
    ),
    "empirical_rf": (
        lambda m, name: ol.empirical_rf(m, name, 0, images(3), k=1, key=0),
        "empirical_rf",
        "layer",
    ),
}
if hasattr(ol, "maximize"):
    LAYER_CALLS["maximize"] = (
        lambda m, name: ol.maximize(m, T.channel(0), layer=name, init=images(B), steps=1),
        "maximize",
        "layer",
    )
_UNKNOWN_LAYER_KNOWN: dict[str, str] = {}
CASES += [("unknown layer", name) for name in LAYER_CALLS]
KNOWN += [("unknown layer", name) for name in _UNKNOWN_LAYER_KNOWN]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=[pytest.mark.xfail(reason=_UNKNOWN_LAYER_KNOWN[n], strict=True)]
            if n in _UNKNOWN_LAYER_KNOWN
            else [],
        )
        for n in LAYER_CALLS
    ],
)
@given(layer=st.text(max_size=12).filter(lambda s: s not in LAYERS))
def test_unknown_layer(name, layer):
    run, call, argument = LAYER_CALLS[name]
    model = net()
    state = ModelState.of(model)
    match = rf"^{call}\({argument}={re.escape(repr(layer))}\): Net has no layer .*close matches"
    with pytest.raises(ol.OcclensError, match=match):
        run(model, layer)
    assert_untouched(model, state)


CASES += [("layer name type", name) for name in LAYER_CALLS]
KNOWN += [("layer name type", name) for name in _UNKNOWN_LAYER_KNOWN]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=[pytest.mark.xfail(reason=_UNKNOWN_LAYER_KNOWN[n], strict=True)]
            if n in _UNKNOWN_LAYER_KNOWN
            else [],
        )
        for n in LAYER_CALLS
    ],
)
@given(layer=st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2), st.just(b"x")))
def test_layer_name_that_is_not_a_string(name, layer):
    run, call, argument = LAYER_CALLS[name]
    with pytest.raises(ol.OcclensError, match=rf"^{call}\({argument}\): got .*pass the layer name"):
        run(net(), layer)


CASES += [("layers of a function", "layers"), ("layer of a function", "layer")]


@given(model=st.one_of(st.none(), st.integers(), st.just(lambda x: x)))
def test_layers_need_a_module(model):
    with pytest.raises(ol.OcclensError, match=r"^layers\(model\): needs an nn.Module"):
        ol.layers(model)
    with pytest.raises(ol.OcclensError, match=r"^layer\(model\): needs an nn.Module"):
        ol.layer(model, "features")


def _geometry_error(
    height: int, width: int, window: tuple[int, int], stride: tuple[int, int], box
) -> str | None:
    """The argument occlusion must name for these settings (checked in this order), or None."""
    if min(window) < 1:
        return "window"
    if min(stride) < 1:
        return "stride"
    if box is None:
        return "window" if window[0] > height or window[1] > width else None
    y0, x0, y1, x1 = box
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        return "box"
    return None


CASES.append(("occlusion geometry", "occlusion"))


@given(
    size=st.tuples(st.integers(3, 10), st.integers(3, 10)),
    window=st.tuples(st.integers(-2, 12), st.integers(-2, 12)),
    stride=st.tuples(st.integers(-2, 12), st.integers(-2, 12)),
    box=st.none() | st.tuples(*[st.integers(-3, 12)] * 4),
    edge=st.sampled_from(["fit", "cover"]),
)
def test_occlusion_windows_strides_and_boxes(size, window, stride, box, edge):
    argument = _geometry_error(*size, window, stride, box)
    assume(argument is not None)
    x = torch.rand(3, *size)
    with pytest.raises(ol.OcclensError, match=rf"^occlusion\({argument}\): "):
        ol.occlusion(
            lambda t: t.mean((2, 3)), x, 0, window=window, stride=stride, box=box, edge=edge
        )


CASES.append(("occlusion window beyond a box", "occlusion"))


@given(
    box=st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(1, 4)),
    extra=st.integers(1, 12),
)
def test_occlusion_window_that_fits_no_box(box, extra):
    """A box at the bottom edge lower than the window: no window fits in the image below it."""
    x0, h, w = box
    window = (h + extra, w)
    with pytest.raises(ol.OcclensError, match=r"^occlusion\(window\): no window of size"):
        ol.occlusion(lambda t: t.mean((2, 3)), torch.rand(3, 10, 10), 0, window=window,
                     box=(10 - h, x0, 10, x0 + w))  # fmt: skip


KEYED = {
    "occlusion": lambda key: ol.occlusion(
        net(), images(B), 1, window=4, fill=ol.fills.uniform(), key=key
    ),
    "smoothgrad": lambda key: ol.smoothgrad(n=2)(ol.saliency)(net(), images(B), 1, key=key),
    "empirical_rf": lambda key: ol.empirical_rf(net(), LAYER, 0, images(3), k=1, key=key),
    "receptive_field": lambda key: ol.receptive_field(net(), LAYER, 12, method="gradient", key=key),
}
if hasattr(ol, "maximize"):
    KEYED["maximize"] = lambda key: ol.maximize(net(), 1, shape=(3, 12, 12), steps=1, key=key)
CASES += [("bad key", name) for name in KEYED]


@pytest.mark.parametrize("name", sorted(KEYED))
@given(
    key=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**64),
        st.floats(allow_nan=False),
        st.text(max_size=3),
        st.booleans(),
    )
)
def test_bad_key(name, key):
    with pytest.raises(ol.OcclensError, match=rf"^{name}\(key\): got "):
        KEYED[name](key)


CHUNKED = {
    "occlusion": lambda c: ol.occlusion(net(), images(B), 1, window=4, chunk_size=c),
    "integrated_gradients": lambda c: ol.integrated_gradients(
        net(), images(B), 1, steps=2, chunk_size=c
    ),
    "smoothgrad": lambda c: ol.smoothgrad(n=2, chunk_size=c),
    "empirical_rf": lambda c: ol.empirical_rf(net(), LAYER, 0, images(3), k=1, key=0, chunk_size=c),
    "top_k": lambda c: ol.top_k(net(), images(B), 1, k=1, batch_size=c),
}
CASES += [("bad chunk size", name) for name in CHUNKED]


@pytest.mark.parametrize(
    "name",
    sorted(CHUNKED),
)
@given(
    size=st.one_of(
        st.integers(max_value=0), st.floats(0.5, 9.5), st.booleans(), st.text(max_size=2)
    )
)
def test_bad_chunk_size(name, size):
    argument = "batch_size" if name == "top_k" else "chunk_size"
    with pytest.raises(ol.OcclensError, match=rf"^{name}\({argument}\): got "):
        CHUNKED[name](size)


CASES.append(("k beyond the images", "top_k"))


@given(n=st.integers(1, 4), beyond=st.integers(1, 10))
def test_top_k_asks_for_more_images_than_given(n, beyond):
    with pytest.raises(ol.OcclensError, match=rf"^top_k\(k\): k={n + beyond} but images holds {n}"):
        ol.top_k(net(), images(n), 0, k=n + beyond)


# --- the count --------------------------------------------------------------------------------


def test_there_are_at_least_forty_cases():
    passing = set(CASES) - set(KNOWN)
    assert len(passing) >= 40
    assert len({family for family, _ in passing}) >= 20
