"""Every public method of occlens with one minimal valid call: the rows of the contract matrix.

A `Method` says how to call a public function on a small model, an image batch and a target, and
which parts of the contract apply to it (batches, chunking, keys, whether it runs the model).
`tests/test_contract.py` runs every row through every applicable check, so a new method gets the
whole contract by adding one row here; a test fails when a public function that takes a model
has no row.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import occlens as ol
from occlens import maps as M
from occlens import targets as T

SIZE = 12  # images are [3, SIZE, SIZE]
CLASSES = 3
LAYER = "features.4"  # the second conv of `Net`: [B, 8, SIZE // 2, SIZE // 2]

# The names of the first parameter that make a public function a method over a model.
MODEL_PARAMETERS = ("model", "model_fn")


class Net(nn.Module):
    """A 1.5k-parameter CNN with BatchNorm (running stats set, so state_dict bytes matter) and
    every ReLU spelling: ``nn.ReLU(inplace=True)``, ``nn.ReLU()``, ``F.relu``, ``torch.relu``.

    ``features`` gives ``[B, 8, H // 2, W // 2]``; the output is ``[B, CLASSES]``. With
    ``norm=False`` the BatchNorm is an ``nn.Identity``: nothing in it depends on train/eval mode.
    """

    def __init__(self, norm: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6) if norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(32, 8)
        self.fc2 = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.relu(self.conv3(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc2(torch.relu(self.fc1(x)))


def net(*, norm: bool = True, seed: int = 0) -> Net:
    """A `Net` in eval mode with weights (and BatchNorm statistics) from `seed`."""
    rng = torch.Generator().manual_seed(seed)
    model = Net(norm)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=rng) * 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.5, generator=rng)
                module.num_batches_tracked.fill_(7)
    return model.eval()


class Untraceable(Net):
    """`Net` with data-dependent control flow: torch.fx cannot trace it, so `layer` and
    ``saliency(at=...)`` fall back to forward hooks scoped to the call."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 0 and bool(x.abs().sum() >= 0):  # a tensor as a bool stops the trace
            return super().forward(x)
        return super().forward(x) * 0


def untraceable(*, norm: bool = True, seed: int = 0) -> Net:
    model = Untraceable(norm)
    model.load_state_dict(net(norm=norm, seed=seed).state_dict())
    return model.eval()


def images(batch: int = 2, *, seed: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, SIZE, SIZE, generator=rng).to(dtype)


Call = Callable[..., object]


@dataclass(frozen=True)
class Method:
    """One row of the matrix.

    * `run(model, x, target, *, key, **chunk)`: the call, on a batch `x` of `batch` images
      ``[B, 3, H, W]`` (one image ``[3, H, W]`` when `one_image`; also when `single`, for the
      loop). `make_model(norm=..., seed=...)` builds the model, in eval mode.
    * `covers`: the public names this row exercises (each must be in ``occlens.__all__``).
    * `target(n)`: a target for a batch of `n` images; `per_sample` when it can be one index per
      image (a ``LongTensor[n]``), else the same target serves every batch.
    * `single`: the method takes one image as well as a batch, and a batch equals the loop.
    * `loop`: how to compute the batch by hand, when it is not stacking single-image calls.
    * `chunk`: the keyword that bounds the work per model call, and values to try.
    * `chunk_exact`: every chunk size of 2 or more gives a bit-identical result (a size of 1
      takes other CPU kernels: equal to float rounding). False where the chunk sets how many
      points or noisy copies share one backward pass, whose rounding then differs.
    * `random`: the result depends on `key` (different keys give different results).
    * `runs_model`: the call runs the model.
    * `train_policy`: ``"refuse"`` a train-mode BatchNorm (`occlens._checks.check_eval_policy`),
      ``"ignore"`` the mode (nothing is run), or ``"user"``: the result is a model function that
      the user calls, which then behaves exactly as the model itself does in its mode.
    * `one_image`: the method takes one image ``[3, H, W]`` only (no batches).
    * `batch_xfail`: a known violation of batch == loop, with the reason (strict xfail).
    """

    id: str
    covers: tuple[str, ...]
    run: Call
    target: Callable[[int], object] = lambda n: torch.arange(n) % CLASSES
    per_sample: bool = True
    single: bool = True
    loop: Callable[[Call, nn.Module, Tensor, object], object] | None = None
    chunk: tuple[str, tuple[int, ...]] | None = None
    chunk_exact: bool = True
    random: bool = False
    runs_model: bool = True
    train_policy: str = "refuse"
    batch: int = 2
    one_image: bool = False
    batch_xfail: str | None = None
    make_model: Callable[..., nn.Module] = field(default=net)

    def __repr__(self) -> str:
        return self.id


# --- the calls ------------------------------------------------------------------------------


def _occlusion(model, x, target, *, key=None, **chunk):
    return ol.occlusion(model, x, target, window=4, stride=3, key=key, **chunk)


def _occlusion_noise(model, x, target, *, key=None, **chunk):
    fill = ol.fills.uniform(-1, 1)
    return ol.occlusion(
        model, x, target, window=(3, 5), stride=(2, 4), fill=fill, edge="cover", key=key, **chunk
    )


def _occlusion_unit(model, x, target, *, key=None, **chunk):
    return ol.occlusion(
        ol.layer(model, LAYER),
        x,
        target,
        window=3,
        stride=1,
        aggregate="center",
        absolute=True,
        box=(0, 0, 8, 8),
        key=key,
        **chunk,
    )


CHUNKS = ("chunk_size", (1, 4))


def _occlusion_engine(engine: str) -> Call:
    def run(model, x, target, *, key=None, **chunk):
        return ol.occlusion(
            model, x, target, window=(3, 4), stride=2, edge="cover", engine=engine, key=key, **chunk
        )

    return run


def _occlusion_unit_engine(engine: str) -> Call:
    def run(model, x, target, *, key=None, **chunk):
        return ol.occlusion(
            ol.layer(model, LAYER), x, target, window=3, stride=2, engine=engine, key=key, **chunk
        )

    return run


def _saliency(model, x, target, *, key=None):
    return ol.saliency(model, x, target, key=key)


def _saliency_at(model, x, target, *, key=None):
    return ol.saliency(model, x, target, at=LAYER, key=key)


def _input_x_gradient(model, x, target, *, key=None):
    return ol.input_x_gradient(model, x, target, key=key)


def _guided(model, x, target, *, key=None):
    return ol.saliency(ol.guided(model), x, target, key=key)


def _deconvnet(model, x, target, *, key=None):
    return ol.input_x_gradient(ol.deconvnet(model), x, target, key=key)


def _integrated(model, x, target, *, key=None, **chunk):
    return ol.integrated_gradients(model, x, target, baseline="mean", steps=5, key=key, **chunk)


def _smoothgrad(model, x, target, *, key=None, chunk_size=None):
    smooth = ol.smoothgrad(n=4, sigma=0.1, chunk_size=chunk_size)
    return smooth(ol.saliency)(model, x, target, key=key)


def _pipeline(model, x, target, *, key=None, chunk_size=None):
    explain = ol.chain(
        ol.smoothgrad(n=3, sigma=0.2, kind="var", chunk_size=chunk_size),
        ol.identity(),
        ol.map_output(M.abs, M.max_channels, M.normalize),
    )(ol.saliency)
    return explain(ol.guided(model), x, target, key=key)


def _layer(model, x, target, *, key=None):
    with torch.no_grad():
        return ol.layer(model, LAYER)(x)


def _layer_loop(run: Call, model: nn.Module, x: Tensor, target: object) -> object:
    # A model function takes batches only: the loop runs batches of one.
    return torch.cat([run(model, x[i : i + 1], target) for i in range(len(x))])


def _layers(model, x, target, *, key=None):
    return ol.layers(model)


def _upsample(model, x, target, *, key=None):
    return ol.upsample_activation(
        ol.layer(model, LAYER), x, target, mode="bilinear", threshold=0.5, below="zero"
    )


def _top_k(model, x, target, *, key=None, **chunk):
    return ol.top_k(model, x, target, k=3, **chunk)


def _top_k_loop(run: Call, model: nn.Module, x: Tensor, target: object) -> object:
    # A stream of single images must give what the whole tensor gives.
    return run(model, list(x), target)


def _top_k_channel(model, x, target, *, key=None, **chunk):
    return ol.top_k(ol.layer(model, LAYER), x, target, k=2, largest=False, **chunk)


def _receptive(model, x, target, *, key=None):
    return ol.receptive_field(model, LAYER, tuple(x.shape[-3:]))


def _receptive_gradient(model, x, target, *, key=None):
    return ol.receptive_field(model, LAYER, tuple(x.shape[-3:]), method="gradient", key=key)


def _empirical(model, x, target, *, key=None, **chunk):
    return ol.empirical_rf(model, LAYER, target, x, k=2, key=key, **chunk)


def _empirical_upsample(model, x, target, *, key=None):
    return ol.empirical_rf(model, LAYER, target, x, k=2, engine="upsample", mode="bilinear")


def _maximize(model, x, target, *, key=None):
    return ol.maximize(
        model,
        target,
        init=x,
        steps=3,
        regularizers=[ol.reg.tv(1e-3), ol.reg.l2(1e-2)],
        precondition=ol.reg.blur(0.5, every=2),
        gradient_filter=ol.reg.fourier(0.5),
        key=key,
    )


def _maximize_loop(run: Call, model: nn.Module, x: Tensor, target: object) -> object:
    # Scores are [steps, B] for a batch and [steps] for one image.
    single = [run(model, x[i], target[i]) for i in range(len(x))]  # type: ignore[index]
    return Parts(
        [
            torch.stack([r.image for r in single]),
            torch.stack([r.scores for r in single], dim=1),
            torch.stack([r.score for r in single]),
        ]
    )


def _maximize_noise(model, x, target, *, key=None):
    return ol.maximize(
        model,
        T.channel(2),
        layer=LAYER,
        shape=tuple(x.shape),
        steps=3,
        parameterization="fourier",
        key=key,
    )


def _masked(model, x, target, *, key=None, **chunk):
    return ol.masked_image(model, x, target, sigma=0.5, keep=0.5, max_steps=4, **chunk)


PARCELS = (
    torch.arange(9).reshape(3, 3).repeat_interleave(SIZE // 3, 0).repeat_interleave(SIZE // 3, 1)
)


def _minimal(model, x, target, *, key=None, **chunk):
    fill = ol.fills.uniform(0, 1)
    return ol.minimal_image(
        model, x, target, segments=PARCELS, keep=0.6, fill=fill, key=key, **chunk
    )


def _minimal_components(model, x, target, *, key=None, **chunk):
    return ol.minimal_image(
        model, x, target, segments="pca", options={"patch": 4}, search="greedy", keep=0.5, **chunk
    )


def _channel(n: int) -> int:
    return 1


METHODS: tuple[Method, ...] = (
    Method("occlusion", ("occlusion",), _occlusion, chunk=("chunk_size", (1, 2, 5))),
    Method(
        "occlusion-noise",
        ("occlusion", "fills"),
        _occlusion_noise,
        chunk=("chunk_size", (1, 3)),
        random=True,
    ),
    Method(
        "occlusion-unit",
        ("occlusion", "layer", "targets"),
        _occlusion_unit,
        target=lambda n: T.peak(torch.arange(n) % 8),
        chunk=("chunk_size", (1, 4)),
    ),
    Method("saliency", ("saliency",), _saliency),
    Method(
        "saliency-at",
        ("saliency",),
        _saliency_at,
        target=lambda n: T.prob(torch.arange(n) % CLASSES),
    ),
    Method(
        "saliency-at-hooked",
        ("saliency",),
        _saliency_at,
        target=lambda n: T.prob(torch.arange(n) % CLASSES),
        make_model=untraceable,
    ),
    Method("input_x_gradient", ("input_x_gradient",), _input_x_gradient),
    Method("guided", ("guided", "saliency"), _guided),
    Method("deconvnet", ("deconvnet", "input_x_gradient"), _deconvnet),
    Method(
        "integrated_gradients",
        ("integrated_gradients",),
        _integrated,
        chunk_exact=False,
        chunk=("chunk_size", (1, 2)),
    ),
    Method(
        "smoothgrad",
        ("smoothgrad", "saliency"),
        _smoothgrad,
        chunk_exact=False,
        chunk=("chunk_size", (1, 3)),
        random=True,
    ),
    Method(
        "pipeline",
        ("chain", "identity", "map_output", "maps", "smoothgrad", "guided"),
        _pipeline,
        chunk_exact=False,
        chunk=("chunk_size", (1, 2)),
        random=True,
    ),
    Method(
        "layer",
        ("layer",),
        _layer,
        per_sample=False,
        single=False,
        loop=_layer_loop,
        train_policy="user",
    ),
    Method(
        "layer-hooked",
        ("layer",),
        _layer,
        per_sample=False,
        single=False,
        loop=_layer_loop,
        train_policy="user",
        make_model=untraceable,
    ),
    Method(
        "layers",
        ("layers",),
        _layers,
        per_sample=False,
        single=False,
        runs_model=False,
        train_policy="ignore",
    ),
    Method(
        "upsample_activation",
        ("upsample_activation", "layer"),
        _upsample,
        target=_channel,
        per_sample=False,
    ),
    Method(
        "top_k",
        ("top_k",),
        _top_k,
        target=lambda n: 2,
        per_sample=False,
        loop=_top_k_loop,
        chunk=("batch_size", (1, 2)),
        batch=5,
    ),
    Method(
        "top_k-channel",
        ("top_k", "layer"),
        _top_k_channel,
        target=_channel,
        per_sample=False,
        loop=_top_k_loop,
        chunk=("batch_size", (1, 3)),
        batch=4,
    ),
    Method(
        "receptive_field",
        ("receptive_field", "RF"),
        _receptive,
        per_sample=False,
        single=False,
        runs_model=False,
        train_policy="ignore",
    ),
    Method(
        "receptive_field-gradient",
        ("receptive_field", "RF"),
        _receptive_gradient,
        per_sample=False,
        single=False,
    ),
    Method(
        "empirical_rf",
        ("empirical_rf", "EmpiricalRF", "TopK"),
        _empirical,
        target=_channel,
        per_sample=False,
        single=False,
        chunk=("chunk_size", (1, 7)),
        random=True,
        batch=4,
    ),
    Method(
        "empirical_rf-upsample",
        ("empirical_rf", "EmpiricalRF"),
        _empirical_upsample,
        target=_channel,
        per_sample=False,
        single=False,
        batch=3,
    ),
)


if "engine" in inspect.signature(ol.occlusion).parameters:
    METHODS += (
        Method("occlusion-batched", ("occlusion",), _occlusion_engine("batched"), chunk=CHUNKS),
        Method("occlusion-incremental", ("occlusion",), _occlusion_engine("incremental")),
        Method(
            "occlusion-unit-incremental",
            ("occlusion", "layer", "targets"),
            _occlusion_unit_engine("incremental"),
            target=lambda n: T.unit(torch.arange(n) % 8, 2, 3),
        ),
    )


def _approximate(model, x, target, *, key=None, **chunk):
    return ol.occlusion_approximate(
        model, x, target, window=(3, 4), stride=2, edge="cover", tau=0.6, drill=(2, 0.5),
        key=key, **chunk,
    )  # fmt: skip


def _approximation_ssim(model, x, target, *, key=None, **chunk):
    report = ol.approximation_ssim(
        model, x, target, window=3, stride=2, tau=0.6, drill=(2, 0.5), key=key, **chunk
    )
    return torch.tensor(report.ssim, dtype=torch.float64)  # a report holds Python floats


def _explain_engine(model, x, target, *, key=None, **chunk):
    plan = ol.explain_engine(model, x, target, window=3, stride=1, key=key, **chunk)
    counts = [plan.flops_full, plan.flops_incremental, plan.live, plan.positions]
    return torch.tensor(counts, dtype=torch.float64)


if hasattr(ol, "occlusion_approximate"):
    METHODS += (
        Method(
            "occlusion_approximate",
            ("occlusion_approximate",),
            _approximate,
            chunk=("chunk_size", (1, 7)),
            chunk_exact=False,  # a chunk is one batched conv per layer: its rounding differs
        ),
        Method(
            "approximation_ssim",
            ("approximation_ssim",),
            _approximation_ssim,
            single=False,
            chunk=("chunk_size", (1, 7)),
            chunk_exact=False,
        ),
        Method(
            "explain_engine",
            ("explain_engine",),
            _explain_engine,
            per_sample=False,
            single=False,
            chunk=("chunk_size", (1, 7)),
        ),
    )

if hasattr(ol, "maximize"):
    METHODS += (
        Method("maximize", ("maximize", "reg"), _maximize, loop=_maximize_loop),
        Method(
            "maximize-noise",
            ("maximize",),
            _maximize_noise,
            per_sample=False,
            single=False,
            random=True,
        ),
    )

if hasattr(ol, "masked_image"):
    METHODS += (
        Method(
            "masked_image",
            ("masked_image", "Masked"),
            _masked,
            target=lambda n: T.prob(1),
            per_sample=False,
            single=False,
            one_image=True,
            chunk=("batch_size", (1, 3)),
        ),
    )
if hasattr(ol, "minimal_image"):
    METHODS += (
        Method(
            "minimal_image",
            ("minimal_image", "Minimal"),
            _minimal,
            target=lambda n: T.prob(1),
            per_sample=False,
            single=False,
            one_image=True,
            chunk=("batch_size", (1, 4)),
            random=True,
        ),
        Method(
            "minimal_image-pca",
            ("minimal_image",),
            _minimal_components,
            target=lambda n: T.prob(2),
            per_sample=False,
            single=False,
            one_image=True,
            chunk=("batch_size", (2,)),
        ),
    )

BY_ID = {m.id: m for m in METHODS}


def model_methods(module: object = ol) -> list[str]:
    """The names in ``module.__all__`` of public functions whose first parameter is a model."""
    names = []
    for name in module.__all__:  # type: ignore[attr-defined]
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.ismodule(obj) or not callable(obj):
            continue
        try:
            parameters = list(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            continue
        if parameters and parameters[0] in MODEL_PARAMETERS:
            names.append(name)
    return names


def covered() -> set[str]:
    return {name for method in METHODS for name in method.covers}


# --- results as comparable parts --------------------------------------------------------------


class Parts(list):
    """A result already split into parts."""


def parts(result: object) -> list[object]:
    """A result as a flat list of tensors and plain values, for comparisons.

    Tensors stay whole; named tuples (`TopK`) and dataclasses (`EmpiricalRF`, `RF`, ...) are
    opened field by field, so a new result type needs no code here.
    """
    if isinstance(result, Parts):
        return list(result)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        dtype = torch.float64 if isinstance(result, float) else torch.int64
        return [torch.tensor(result, dtype=dtype)]  # for NaN-aware comparisons
    if isinstance(result, (Tensor, str, bool)) or result is None:
        return [result]
    if isinstance(result, (list, tuple)) and all(isinstance(r, str) for r in result):
        return [tuple(result)]
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return [p for item in result for p in parts(item)]
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        fields = dataclasses.fields(result)
        return [p for f in fields for p in parts(getattr(result, f.name))]
    if isinstance(result, (list, tuple)):
        return [p for item in result for p in parts(item)]
    raise TypeError(f"no comparison for {type(result).__name__}")


def stacked(results: Sequence[object]) -> Parts:
    """Single-image results stacked into the batch's parts."""
    split = [parts(r) for r in results]
    return Parts(torch.stack([s[i] for s in split]) for i in range(len(split[0])))


def tensors_of(value: object) -> list[Tensor]:
    """The tensors inside an argument (a tensor, a target, a fill), for the untouched check."""
    if isinstance(value, Tensor):
        return [value]
    found = []
    for attribute in vars(value).values() if hasattr(value, "__dict__") else ():
        if isinstance(attribute, Tensor):
            found.append(attribute)
    return found
