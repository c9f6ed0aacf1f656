"""One contract for every public method: the matrix of `_registry.METHODS` x the checks below.

Batches equal the per-image loop, chunking changes nothing, the same key gives the same result,
float32 and float64 agree, CUDA equals the CPU, the train-mode policy holds, and neither the model
(state_dict bytes, requires_grad, hooks, training flags, module tree; also when the model raises)
nor the inputs nor torch's global state change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from _registry import (
    METHODS,
    Method,
    Parts,
    covered,
    images,
    model_methods,
    parts,
    stacked,
    tensors_of,
)
from _state import ModelState, assert_untouched, tensor_state
from torch import Tensor, nn

import occlens as ol

CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device: the CUDA column of the matrix runs where torch.cuda.is_available()"


def cells(predicate: Callable[[Method], bool] = lambda m: True) -> list[object]:
    """The matrix rows a check applies to, each a param with the method's id."""
    return [pytest.param(m, id=m.id) for m in METHODS if predicate(m)]


def call(method: Method, model: nn.Module, x: Tensor, target: object, **options: object):
    return method.run(model, x, target, **{"key": 0, **options})


def setup(method: Method, **model_options: object) -> tuple[nn.Module, Tensor, object]:
    x = images(method.batch)
    return (
        method.make_model(**model_options),
        x[0] if method.one_image else x,
        method.target(method.batch),
    )


def assert_same(actual: object, expected: object, *, exact: bool = False, **tolerance) -> None:
    """Every part equal: bit for bit with `exact`, else within `tolerance` (integers exactly)."""
    got, want = parts(actual), parts(expected)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        if not isinstance(a, Tensor):
            assert a == b, (a, b)
        elif exact or not a.is_floating_point():
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True)
        else:
            torch.testing.assert_close(a.cpu(), b.to(a.dtype).cpu(), **tolerance)


def global_state() -> tuple:
    """What torch keeps globally that a call must leave as it was."""
    return (
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.get_default_dtype(),
        torch.random.get_rng_state().numpy().tobytes(),
        torch._C._len_torch_function_stack(),
        torch._C._functorch.maybe_current_level(),
        torch.get_num_threads(),
    )


@contextmanager
def untouched(model: nn.Module, *tensors: Tensor) -> Iterator[None]:
    """Assert that the block leaves the model, the tensors and torch's global state alone, even
    when it raises."""
    before = ModelState.of(model)
    inputs = [tensor_state(t) for t in tensors]
    world = global_state()
    try:
        yield
    finally:
        assert_untouched(model, before)
        assert [tensor_state(t) for t in tensors] == inputs, "an input tensor changed"
        assert global_state() == world, "torch's global state changed"


# --- coverage of the registry ------------------------------------------------------------------


def test_every_public_method_taking_a_model_has_a_row():
    found = model_methods()
    assert {"occlusion", "saliency", "top_k", "empirical_rf"} <= set(found)  # the scan works
    missing = set(found) - covered()
    assert not missing, f"add rows to tests/_registry.py for {sorted(missing)}"


def test_every_row_names_public_functions():
    stale = covered() - set(ol.__all__)
    assert not stale, f"registry rows name {sorted(stale)}, which occlens no longer exports"


def test_the_scan_sees_a_new_method():
    class Fake:
        __all__ = ("helper", "explain", "Result")

        @staticmethod
        def helper(x: int) -> int:
            return x

        @staticmethod
        def explain(model_fn, x, target):
            return x

        class Result:
            def __init__(self, model_fn):
                pass

    assert model_methods(Fake) == ["explain"]


# --- batches, chunks, keys, dtypes, devices ------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(
            m,
            id=m.id,
            marks=[pytest.mark.xfail(reason=m.batch_xfail, strict=True)] if m.batch_xfail else [],
        )
        for m in METHODS
        if m.single or m.loop
    ],
)
def test_batch_equals_the_loop(method):
    model, x, target = setup(method)
    batch = call(method, model, x, target)
    if method.loop is not None:
        looped = method.loop(lambda *a, **o: call(method, *a, **o), model, x, target)
        assert_same(batch, looped, rtol=1e-5, atol=1e-6)
        return
    single = []
    for i in range(len(x)):
        one = target[i] if isinstance(target, Tensor) else target
        if isinstance(target, ol.targets.Target):  # a target holding indices
            one = target.select(i)
        single.append(call(method, model, x[i], one))
    assert_same(batch, stacked(single), rtol=1e-5, atol=1e-6)


def chunk_cells() -> list[object]:
    return [
        pytest.param(m, value, id=f"{m.id}-{m.chunk[0]}={value}")
        for m in METHODS
        if m.chunk
        for value in m.chunk[1]
    ]


@pytest.mark.parametrize(("method", "value"), chunk_cells())
def test_chunking_changes_nothing(method, value):
    model, x, target = setup(method)
    name = method.chunk[0]
    reference = call(method, model, x, target)
    chunked = call(method, model, x, target, **{name: value})
    if method.chunk_exact and value >= 2:
        assert_same(chunked, reference, exact=True)
    else:  # float rounding only: calls of one image take other CPU kernels than larger ones
        assert_same(chunked, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", cells())
def test_the_same_key_twice_gives_identical_results(method):
    model, x, target = setup(method)
    assert_same(call(method, model, x, target), call(method, model, x, target), exact=True)
    if method.random:
        other = call(method, model, x, target, key=1)
        with pytest.raises(AssertionError):
            assert_same(other, call(method, model, x, target), exact=True)


@pytest.mark.parametrize("method", cells(lambda m: m.random))
def test_a_generator_key_is_copied_not_advanced(method):
    model, x, target = setup(method)
    key = torch.Generator().manual_seed(0)
    state = key.get_state()
    first = call(method, model, x, target, key=key)
    assert torch.equal(key.get_state(), state), "the caller's generator was advanced"
    assert_same(call(method, model, x, target, key=key), first, exact=True)
    assert_same(call(method, model, x, target, key=0), first, exact=True)


@pytest.mark.parametrize("method", cells(lambda m: m.random))
def test_a_random_method_without_key_refuses(method):
    model, x, target = setup(method)
    with untouched(model, x), pytest.raises(ol.OcclensError, match=r"\(key\).*pass key=0"):
        call(method, model, x, target, key=None)


@pytest.mark.parametrize("method", cells())
def test_float64_agrees_with_float32(method):
    model, x, target = setup(method)
    single = call(method, model, x, target)
    double = call(method, copy.deepcopy(model).double(), x.double(), target)
    for part in parts(double):
        if isinstance(part, Tensor) and part.is_floating_point():
            assert part.dtype == torch.float64, "a float64 input gave a lower-precision result"
    scale = max(
        (
            float(p.abs().max())
            for p in parts(double)
            if isinstance(p, Tensor) and p.is_floating_point() and p.numel()
        ),
        default=1.0,
    )
    assert_same(single, double, rtol=1e-3, atol=1e-4 * max(scale, 1e-3))


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("method", cells())
def test_cuda_equals_cpu(method):
    model, x, target = setup(method)
    cpu = call(method, model, x, target)
    gpu_model = copy.deepcopy(model).cuda()
    gpu_target = target.cuda() if isinstance(target, Tensor) else target
    with untouched(gpu_model, x):
        gpu = call(method, gpu_model, x.cuda(), gpu_target)
    main = parts(gpu)[0]
    if isinstance(main, Tensor) and main.is_floating_point():
        assert main.device.type == "cuda", "the result left the input's device"
    assert_same(gpu, cpu, rtol=1e-4, atol=1e-5)


# --- the train-mode policy ----------------------------------------------------------------------


@pytest.mark.parametrize("method", cells(lambda m: m.train_policy != "user"))
def test_train_mode_batchnorm_follows_the_policy(method):
    """Methods that run the model refuse a mode-dependent layer in training mode (check_eval_policy:
    its output would depend on the batch, and its running stats would change); occlens never
    switches the mode itself. Methods that do not run the model ignore the mode."""
    model, x, target = setup(method)
    expected = call(method, model, x, target)
    model.train()
    with untouched(model, x):
        if method.train_policy == "refuse":
            with pytest.raises(ol.OcclensError, match=r"BatchNorm2d.*training mode.*eval\(\)"):
                call(method, model, x, target)
        else:
            assert_same(call(method, model, x, target), expected, exact=True)
    assert model.training and model.features[1].training


@pytest.mark.parametrize("method", cells(lambda m: m.train_policy == "user"))
def test_train_mode_model_function_behaves_as_the_model(method):
    """A model function handed to the user (layer) runs in the model's own mode, like the model:
    the same output and the same running-stat update as the model's own forward pass."""
    model, x, target = setup(method)
    mine = copy.deepcopy(model).train()
    model.train()
    result = call(method, model, x, target)
    with torch.no_grad():
        expected = mine.features[:5](x)
    assert_same(result, expected, exact=True)
    assert_same(Parts(model.state_dict().values()), Parts(mine.state_dict().values()), exact=True)
    assert model.training


@pytest.mark.parametrize("method", cells())
def test_train_mode_without_mode_dependent_layers_gives_the_eval_result(method):
    model, x, target = setup(method, norm=False)
    expected = call(method, model, x, target)
    model.train()
    with untouched(model, x):
        assert_same(call(method, model, x, target), expected, exact=True)
    assert all(m.training for m in model.modules())


# --- nothing is changed: the model, the inputs, torch ---------------------------------------------


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
@pytest.mark.parametrize("method", cells())
def test_the_model_and_inputs_are_untouched(method, frozen):
    model, x, target = setup(method)
    if frozen:
        model.requires_grad_(False)
    else:  # a user's own gradients and hook must survive as they are
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.25)
    seen = []
    handle = model.fc2.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        with untouched(model, x, *tensors_of(target)):
            call(method, model, x, target)
        if not frozen:
            assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    finally:
        handle.remove()


@pytest.mark.parametrize("method", cells())
def test_an_input_that_requires_grad_is_untouched(method):
    model, x, target = setup(method)
    expected = call(method, model, x, target)
    x.requires_grad_(True)
    with untouched(model, x):
        result = call(method, model, x, target)
    assert x.grad is None
    assert_same(Parts(p.detach() if isinstance(p, Tensor) else p for p in parts(result)), expected)


class Boom(RuntimeError):
    pass


def _trap(model: nn.Module, fire_at: int | None) -> tuple[list[int], object]:
    """A pre-hook on the model's first conv that counts calls and raises `Boom` from call
    `fire_at` on (the exception starts inside the model's forward pass)."""
    count = [0]

    def hook(module: nn.Module, args: object) -> None:
        count[0] += 1
        if fire_at is not None and count[0] >= fire_at:
            raise Boom(f"boom on call {count[0]}")

    return count, model.features[0].register_forward_pre_hook(hook)


def exception_cells() -> list[object]:
    return [
        pytest.param(m, when, id=f"{m.id}-{when}")
        for m in METHODS
        if m.runs_model
        for when in ("first", "last")
    ]


@pytest.mark.parametrize(("method", "when"), exception_cells())
def test_the_model_is_untouched_after_it_raises(method, when):
    model, x, target = setup(method)
    count, handle = _trap(model, None)
    try:
        call(method, model, x, target)
    finally:
        handle.remove()
    calls = count[0]
    assert calls >= 1, "the row says the method runs the model, but it never called it"
    count, handle = _trap(model, 1 if when == "first" else calls)
    try:
        with untouched(model, x, *tensors_of(target)), pytest.raises(Exception) as raised:
            call(method, model, x, target)
    finally:
        handle.remove()
    error = raised.value
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert any(isinstance(e, Boom) for e in chain), f"the model's error was lost: {error!r}"
    if method.train_policy != "user":  # layer(...)(x) is the user's own call of the model
        assert isinstance(error, ol.OcclensError), f"{type(error).__name__}: {error}"
        assert "the model raised Boom" in str(error), str(error)


@pytest.mark.parametrize("method", cells())
def test_an_inference_tensor_input_gives_the_same_result(method):
    """Images preprocessed under torch.inference_mode() are inference tensors, which cannot
    require grad: gradient methods must copy them rather than fail."""
    model, x, target = setup(method)
    expected = call(method, model, x, target)
    with torch.inference_mode():
        frozen = x.clone()
    assert_same(call(method, model, frozen, target), expected, exact=True)


@pytest.mark.parametrize("method", cells())
def test_inside_inference_mode_it_runs_or_says_why(method):
    model, x, target = setup(method)
    expected = call(method, model, x, target)
    refused = None
    with torch.inference_mode():
        try:
            result = call(method, model, x, target)
        except ol.OcclensError as error:
            refused = str(error)
    if refused is not None:
        assert "inference_mode" in refused
        return
    copied = Parts(p.clone() if isinstance(p, Tensor) else p for p in parts(result))
    assert_same(copied, expected, exact=True)


@pytest.mark.parametrize("method", cells())
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_any_memory_layout_gives_the_same_result(method, layout):
    """A channels-last image (as some loaders return) or a strided view of a larger tensor."""
    model, x, target = setup(method)
    expected = call(method, model, x, target)
    if layout == "channels_last":
        batch = x if x.ndim == 4 else x.unsqueeze(0)
        other = batch.contiguous(memory_format=torch.channels_last)
        other = other if x.ndim == 4 else other[0]
    else:
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        other = wide[..., ::2]
    assert torch.equal(other, x) and not other.is_contiguous()
    # A channels-last input takes other conv kernels: float32 rounding, and occlusion deltas
    # are differences of scores, so their rounding error is absolute.
    assert_same(call(method, model, other, target), expected, rtol=1e-4, atol=1e-5)
