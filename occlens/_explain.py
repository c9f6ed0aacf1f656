"""``occlens explain``: the user's model, images and target through the occlens methods.

Every image is explained on its own, as ``[C, H, W]`` pixels in [0, 1] after `--resize`/`--crop`;
normalisation (`--normalize`, `--mean`/`--std`) is part of the model function, so maps are
with respect to those pixels, a fill of 0 is black and the integrated-gradients baseline 0 a
black image. The raw maps written to ``.npz`` equal the Python calls listed in `PYTHON_CALLS`.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import image as im
from . import maps as M
from . import targets as T
from ._errors import OcclensError, describe
from ._fills import Uniform, blur, uniform
from ._gradients import input_x_gradient, saliency
from ._integrated import integrated_gradients
from ._layers import layer
from ._model_loading import LoadedModel
from ._occlusion import occlusion
from ._progress import progress as progress_bar
from ._rewire import deconvnet, guided
from ._smoothgrad import smoothgrad
from ._targets import TargetBase, as_target

__all__ = [
    "METHODS",
    "PYTHON_CALLS",
    "ExplainOptions",
    "Explanation",
    "MethodFailed",
    "TargetSpec",
    "collect_images",
    "explain",
    "parse_fill",
    "parse_size",
    "parse_target",
    "python_call",
]

CALL = "occlens explain"

METHODS = (
    "occlusion",
    "saliency",
    "guided",
    "deconvnet",
    "smoothgrad",
    "integrated-gradients",
    "input-x-gradient",
)
DEFAULT_METHODS = ("occlusion", "saliency", "guided", "integrated-gradients")

PYTHON_CALLS = {
    "occlusion": "ol.occlusion(model, x, target, window=, stride=, fill=, edge=, aggregate=)",
    "saliency": "ol.saliency(model, x, target)",
    "guided": "ol.saliency(ol.guided(model), x, target)",
    "deconvnet": "ol.saliency(ol.deconvnet(model), x, target)",
    "smoothgrad": "ol.smoothgrad(n, sigma, kind=)(ol.saliency)(model, x, target, key=key) "
    "(--smooth-base guided: ol.saliency on ol.guided(model), and so on)",
    "integrated-gradients": "ol.integrated_gradients(model, x, target, baseline=, steps=)",
    "input-x-gradient": "ol.input_x_gradient(model, x, target)",
}
"""The Python call whose result each method's raw map equals (``model`` includes normalisation)."""

REDUCTIONS = ("auto", "abs-max", "sum", "l2", "mean")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_SIGNED = ("integrated-gradients", "input-x-gradient", "occlusion")


def _error(argument: str, problem: str, fix: str) -> OcclensError:
    return OcclensError(f"{CALL}({argument}): {problem}; {fix}.")


class MethodFailed(RuntimeError):
    """A method raised something other than `OcclensError` (the model, or a bug): exit code 1."""


# --- parsing ---------------------------------------------------------------------------------


def parse_size(text: str, argument: str) -> tuple[int, int]:
    """``"224"`` or ``"224x320"`` (height x width) as ``(h, w)``.

    >>> parse_size("224", "--resize"), parse_size("224x320", "--resize")
    ((224, 224), (224, 320))
    """
    found = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", text)
    if not found or int(found.group(1)) < 1 or (found.group(2) and int(found.group(2)) < 1):
        raise _error(argument, f"got {text!r}", "pass a size in pixels, N or HxW, e.g. 224")
    h = int(found.group(1))
    return h, int(found.group(2) or h)


def _numbers(text: str, argument: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or not all(np.isfinite(values)):
        raise _error(
            argument, f"got {text!r}", "pass numbers separated by commas, e.g. 0.5,0.5,0.5"
        )
    return values


def parse_fill(text: str, argument: str = "--fill") -> object:
    """A fill for `occlusion` (or a baseline): a number, ``R,G,B``, ``mean``, ``blur:SIGMA``
    or ``uniform:LO:HI``.

    >>> parse_fill("0.5"), parse_fill("mean"), parse_fill("uniform:0:1"), parse_fill("0,0.5,1")
    (0.5, 'mean', Uniform(lo=0.0, hi=1.0), tensor([0.0000, 0.5000, 1.0000]))
    """
    text = text.strip()
    if text == "mean":
        return "mean"
    if text.startswith("blur:"):
        (sigma,) = _numbers(text[5:], argument)[:1] or [0.0]
        if sigma <= 0:
            raise _error(argument, f"got {text!r}", "pass blur:SIGMA with SIGMA > 0")
        return blur(sigma)
    if text.startswith("uniform:"):
        parts = text.split(":")[1:]
        if len(parts) != 2:
            raise _error(argument, f"got {text!r}", "pass uniform:LO:HI, e.g. uniform:0:1")
        lo, hi = (_numbers(p, argument)[0] for p in parts)
        if not lo < hi:
            raise _error(argument, f"got {text!r}", "pass uniform:LO:HI with LO < HI")
        return uniform(lo, hi)
    values = _numbers(text, argument)
    return values[0] if len(values) == 1 else torch.tensor(values)


@dataclass(frozen=True)
class TargetSpec:
    """What `--target` asked for: a class (``None``: the predicted one) or a layer's target."""

    text: str
    layer: str | None = None
    index: int | None = None
    build: Callable[[], TargetBase] | None = None
    unit: tuple[int, int, int] | None = None


def parse_target(text: str) -> TargetSpec:
    """``predicted``, a class index ``N``, or ``LAYER:CHANNEL`` with an optional ``:Y:X``,
    ``:peak`` or ``:mean|max|sum`` (the channel's reduction).

    >>> parse_target("3").index, parse_target("features.10:12:6:6").unit
    (3, (12, 6, 6))
    >>> parse_target("features.10:12:peak").build()
    Peak(channel=12)
    """
    raw = text.strip()
    if raw in ("predicted", "auto", ""):
        return TargetSpec("predicted")
    if re.fullmatch(r"[+-]?\d+", raw):
        return TargetSpec(raw, index=int(raw))
    name, *rest = raw.split(":")
    fix = (
        "pass a class index (e.g. 3), LAYER:CHANNEL (e.g. features.10:12), "
        "LAYER:CHANNEL:Y:X for one unit, or LAYER:CHANNEL:peak"
    )
    if not name or not rest or not all(re.fullmatch(r"\d+|peak|mean|max|sum", p) for p in rest):
        raise _error("--target", f"cannot read {text!r}", fix)
    if not rest[0].isdigit():
        raise _error("--target", f"the channel in {text!r} is not a number", fix)
    channel = int(rest[0])
    if len(rest) == 1:
        return TargetSpec(raw, layer=name, build=lambda: T.channel(channel))
    if len(rest) == 2 and rest[1] == "peak":
        return TargetSpec(raw, layer=name, build=lambda: T.peak(channel))
    if len(rest) == 2 and rest[1] in ("mean", "max", "sum"):
        how = rest[1]
        return TargetSpec(raw, layer=name, build=lambda: T.channel(channel, how))  # type: ignore[arg-type]
    if len(rest) == 3 and rest[1].isdigit() and rest[2].isdigit():
        y, x = int(rest[1]), int(rest[2])
        return TargetSpec(
            raw, layer=name, build=lambda: T.unit(channel, y, x), unit=(channel, y, x)
        )
    raise _error("--target", f"cannot read {text!r}", fix)


def collect_images(paths: Sequence[str]) -> list[Path]:
    """The image files named, with every folder replaced by its image files (sorted)."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise _error(
                    "images",
                    f"the folder '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)})",
                    "pass a folder of images or the image files themselves",
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise _error(
                "images",
                f"no such file or folder: '{path}'",
                f"check the path (cwd is '{Path.cwd()}')",
            )
    return files


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainOptions:
    """Everything the methods need besides the model, the image and the target."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    fill: object = "mean"
    edge: str = "cover"
    aggregate: str = "mean"
    absolute: bool = False
    n: int = 50
    sigma: float = 0.15
    smooth_kind: str = "mean"
    smooth_base: str = "saliency"
    steps: int = 50
    baseline: object = 0.0
    key: int = 0
    progress: bool | None = None
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    grayscale: bool = False
    reduce: str = "auto"
    traceback: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def occluder(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The window and stride for an image of this size: default window 1/8 of the shorter
        side, stride half the window."""
        if self.window is not None:
            window = self.window
        else:
            side = max(1, round(min(height, width) / 8))
            window = (side, side)
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        return window, stride


class Normalized:
    """``model((x - mean) / std)``: normalisation as part of the model function."""

    def __init__(self, model: Callable[[Tensor], Tensor], mean: Tensor, std: Tensor) -> None:
        self.model, self.mean, self.std = model, mean, std

    def __call__(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean.to(x)) / self.std.to(x))


def _with_rule(
    base: Callable[[Tensor], Tensor], rule: str, loaded: LoadedModel, options: ExplainOptions
) -> Callable[[Tensor], Tensor]:
    fn = {"none": lambda m: m, "guided": guided, "deconvnet": deconvnet}[rule](base)
    if options.mean is None and options.std is None:
        return fn
    channels = max(len(options.mean or ()), len(options.std or ()), 1)
    mean = torch.tensor(options.mean or (0.0,) * channels).view(-1, 1, 1)
    std = torch.tensor(options.std or (1.0,) * channels).view(-1, 1, 1)
    return Normalized(fn, mean, std)


def run_method(
    name: str,
    base: Callable[[Tensor], Tensor],
    x: Tensor,
    target: object,
    loaded: LoadedModel,
    options: ExplainOptions,
) -> Tensor:
    """The raw map of one method, as its Python call in `PYTHON_CALLS` computes it."""
    plain = _with_rule(base, "none", loaded, options)
    if name == "occlusion":
        window, stride = options.occluder(*x.shape[-2:])
        random_fill = isinstance(options.fill, Uniform)
        return occlusion(
            plain,
            x,
            target,
            window=window,
            stride=stride,
            fill=options.fill,
            edge=options.edge,
            aggregate=options.aggregate,
            absolute=options.absolute,
            key=options.key if random_fill else None,
            progress=options.progress,
        )
    if name == "saliency":
        return saliency(plain, x, target)
    if name in ("guided", "deconvnet"):
        return saliency(_with_rule(base, name, loaded, options), x, target)
    if name == "input-x-gradient":
        return input_x_gradient(plain, x, target)
    if name == "integrated-gradients":
        return integrated_gradients(
            plain,
            x,
            target,
            baseline=options.baseline,
            steps=options.steps,
            progress=options.progress,
        )
    if name == "smoothgrad":
        method = input_x_gradient if options.smooth_base == "input-x-gradient" else saliency
        rule = options.smooth_base if options.smooth_base in ("guided", "deconvnet") else "none"
        smooth = smoothgrad(options.n, options.sigma, kind=options.smooth_kind)(method)
        return smooth(_with_rule(base, rule, loaded, options), x, target, key=options.key)
    raise _error("--method", f"unknown method {name!r}", f"use one of {', '.join(METHODS)}")


def python_call(name: str, options: ExplainOptions, size: tuple[int, int]) -> str:
    """The Python call of `PYTHON_CALLS` with this run's option values filled in."""
    if name == "occlusion":
        window, stride = options.occluder(*size)
        random_fill = isinstance(options.fill, Uniform)
        return (
            f"ol.occlusion(model, x, target, window={window!r}, stride={stride!r}, "
            f"fill={options.fill!r}, edge={options.edge!r}, aggregate={options.aggregate!r}"
            + (", absolute=True" if options.absolute else "")
            + (f", key={options.key!r}" if random_fill else "")
            + ")"
        )
    if name == "integrated-gradients":
        return (
            f"ol.integrated_gradients(model, x, target, baseline={options.baseline!r}, "
            f"steps={options.steps!r})"
        )
    if name == "smoothgrad":
        method = (
            "ol.input_x_gradient" if options.smooth_base == "input-x-gradient" else "ol.saliency"
        )
        wrapped = (
            f"ol.{options.smooth_base}(model)"
            if options.smooth_base in ("guided", "deconvnet")
            else "model"
        )
        return (
            f"ol.smoothgrad({options.n!r}, {options.sigma!r}, kind={options.smooth_kind!r})"
            f"({method})({wrapped}, x, target, key={options.key!r})"
        )
    return PYTHON_CALLS[name]


def display_map(name: str, raw: Tensor, size: tuple[int, int], reduce: str = "auto") -> Tensor:
    """The ``[H, W]`` map shown in the panel: channels reduced, grids enlarged to the image."""
    heat = raw.detach().to("cpu", torch.float32)
    if heat.ndim == 3:
        how = reduce
        if how == "auto":
            how = "sum" if name in _SIGNED else "abs-max"
        heat = {
            "abs-max": lambda m: M.max_channels(M.abs(m)),
            "sum": M.sum_channels,
            "l2": M.l2_channels,
            "mean": M.mean_channels,
        }[how](heat)
    if tuple(heat.shape) != size:
        heat = im.resize(heat, size, mode="nearest")
    return heat


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Explanation:
    """One image's maps and what the model said about it."""

    path: Path
    image: Tensor
    target: str
    maps: dict[str, Tensor]
    seconds: dict[str, float]
    score: float
    predicted: int | None = None
    probability: float | None = None
    unit_box: tuple[int, int, int, int] | None = None
    notes: list[str] = field(default_factory=list)


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def _load_image(path: Path, options: ExplainOptions) -> Tensor:
    x = im.load(path, size=options.resize)
    if options.grayscale:
        x = (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(dim=0, keepdim=True)
    if options.crop is not None:
        h, w = options.crop
        height, width = x.shape[-2:]
        if h > height or w > width:
            raise _error(
                "--crop",
                f"the crop {h}x{w} is larger than '{path}' ({height}x{width} after --resize)",
                "crop to at most the image size",
            )
        top, left = (height - h) // 2, (width - w) // 2
        x = x[:, top : top + h, left : left + w].contiguous()
    return x


def _probe(fn: Callable[[Tensor], Tensor], x: Tensor, path: Path) -> Tensor:
    try:
        with torch.no_grad():
            out = fn(x[None])
    except OcclensError:
        raise
    except Exception as error:
        text = " ".join(str(error).split())[:200]
        raise _error(
            "images",
            f"the model failed on '{path}' as {describe(x[None])} ({type(error).__name__}: {text})",
            "check the input size the model expects (--resize, --crop) and its channels",
        ) from None
    if not isinstance(out, Tensor):
        raise _error("model", f"the model returned {describe(out)}", "return a Tensor[B, ...]")
    return out


def _failure(name: str, path: Path, loaded: LoadedModel, error: Exception) -> MethodFailed:
    text = " ".join(str(error).split())[:300] or "no message"
    hint = "rerun with --traceback to see where"
    if loaded.kind == "exported":
        hint = (
            "an ExportedProgram must accept batches of any size: export it with "
            "dynamic_shapes=({0: torch.export.Dim('batch')},); or " + hint
        )
    return MethodFailed(f"{name} failed on '{path}' ({type(error).__name__}: {text}); {hint}.")


def _unit_box(loaded: LoadedModel, spec: TargetSpec, size: tuple[int, int]):
    if spec.unit is None or loaded.kind != "factory" or spec.layer is None:
        return None
    from ._receptive import receptive_field

    try:
        rf = receptive_field(loaded.model, spec.layer, size)  # type: ignore[arg-type]
        return rf.region(spec.unit[1], spec.unit[2], clip=False)
    except (OcclensError, RuntimeError, TypeError):
        return None


def explain(
    loaded: LoadedModel,
    images: Sequence[Path],
    spec: TargetSpec,
    options: ExplainOptions,
    *,
    show_progress: bool | None = None,
) -> list[Explanation]:
    """Explain every image with every method of `options`."""
    for name in options.methods:
        if name not in METHODS:
            raise _error("--method", f"unknown method {name!r}", f"use one of {', '.join(METHODS)}")
    model = loaded.model
    base: Callable[[Tensor], Tensor] = model
    if spec.layer is not None:
        if loaded.kind == "torchscript":
            raise _error(
                "--target",
                f"layer targets ({spec.text!r}) need an eager or exported model, not TorchScript",
                "load the model as package.module:factory, or target a class index",
            )
        base = layer(model, spec.layer)  # type: ignore[arg-type]
    plain = _with_rule(base, "none", loaded, options)
    total = len(images) * len(options.methods)
    if show_progress is None:
        show_progress = total > 1 and sys.stderr.isatty()
    results = []
    with progress_bar(total, "explain", show_progress) as advance:
        for path in images:
            x = _load_image(path, options).to(options.device)
            for argument, stats in (("--mean", options.mean), ("--std", options.std)):
                if stats is not None and len(stats) not in (1, x.shape[0]):
                    raise _error(
                        argument,
                        f"{len(stats)} values for the {x.shape[0]} channels of '{path}'",
                        f"give 1 or {x.shape[0]} values",
                    )
            out = _probe(plain, x, path)
            predicted = probability = None
            if out.ndim == 2 and spec.layer is None:
                scores = out[0].float()
                predicted = int(scores.argmax())
                probability = float(scores.softmax(0)[predicted])
            if spec.layer is None and spec.index is None:
                if predicted is None:
                    raise _error(
                        "--target",
                        f"the model's output is {describe(out)}, not class scores [1, K], so "
                        "there is no predicted class",
                        "pass --target LAYER:CHANNEL (or LAYER:CHANNEL:Y:X) for such outputs",
                    )
                target: object = predicted
                described = f"class {predicted} (predicted)"
            elif spec.layer is None:
                target = spec.index
                described = f"class {spec.index}"
            else:
                target = spec.build()  # type: ignore[misc]
                described = spec.text
            goal = as_target(target, CALL)
            goal.check(out, CALL)
            score = float(goal.resolve(out)(out)[0])
            maps, seconds = {}, {}
            for name in options.methods:
                start = time.perf_counter()
                try:
                    maps[name] = run_method(name, base, x, target, loaded, options)
                except (OcclensError, KeyboardInterrupt):
                    raise
                except Exception as error:
                    if options.traceback:
                        raise
                    raise _failure(name, path, loaded, error) from error
                seconds[name] = time.perf_counter() - start
                advance(1)
            results.append(
                Explanation(
                    path=path,
                    image=x.detach().cpu(),
                    target=described,
                    maps=maps,
                    seconds=seconds,
                    score=score,
                    predicted=predicted,
                    probability=probability,
                    unit_box=_unit_box(loaded, spec, tuple(x.shape[-2:])),
                )
            )
    return results


# --- writing -----------------------------------------------------------------------------------


def key_name(method: str) -> str:
    """The array name of a method in the ``.npz``/safetensors files: ``integrated_gradients``."""
    return method.replace("-", "_")


def stems(paths: Sequence[Path]) -> list[str]:
    """Output names for the images: their stems, made unique with ``-2``, ``-3``... suffixes."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        stem = path.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def write_raw(result: Explanation, folder: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """The raw maps and the input pixels as ``STEM.npz`` and/or ``STEM.safetensors``."""
    arrays = {key_name(name): m.detach().cpu().contiguous() for name, m in result.maps.items()}
    arrays["input"] = result.image.contiguous()
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    if "npz" in formats:
        path = folder / f"{stem}.npz"
        np.savez_compressed(path, **{k: v.numpy() for k, v in arrays.items()})
        written.append(path)
    if "safetensors" in formats:
        from safetensors.torch import save_file

        path = folder / f"{stem}.safetensors"
        save_file(arrays, path, metadata={"target": result.target, "source": str(result.path)})
        written.append(path)
    return written


def write_panels(
    results: Sequence[Explanation],
    names: Sequence[str],
    folder: Path,
    options: ExplainOptions,
    *,
    scale: str | float = "per-map",
    percentile: float = 100.0,
    cmap: str | None = None,
    alpha: float = 0.8,
    cell: int = 192,
    rows: int = 8,
    grid: bool = False,
) -> list[Path]:
    """Comparison panels, `rows` images each: the image, then one overlay per method."""
    if not results:
        return []
    columns = {name: [] for name in options.methods}
    pictures, titles = [], []
    for result, stem in zip(results, names, strict=True):
        size = tuple(result.image.shape[-2:])
        picture = result.image if result.image.shape[0] in (1, 3) else result.image[:3]
        picture = picture.clamp(0, 1)
        if grid and "occlusion" in options.methods:
            window, stride = options.occluder(*size)
            picture = im.draw_grid(picture, window, stride, edge=options.edge)
        if result.unit_box is not None:
            picture = im.draw_box(picture.expand(3, -1, -1), result.unit_box, (0.1, 0.9, 0.2))
        pictures.append(picture)
        title = f"{stem}: {result.target}"
        if result.probability is not None and "predicted" in result.target:
            title = f"{stem}: class {result.predicted} p={result.probability:.2f}"
        titles.append(title)
        for name in options.methods:
            columns[name].append(display_map(name, result.maps[name], size, options.reduce))
    images = [r.image.clamp(0, 1) for r in results]
    ranges: str | dict[str, float] = scale
    if scale == "shared":  # one range per method over every image, across all the panels
        ranges = {
            name: im.limits(column, percentile=percentile)[1] for name, column in columns.items()
        }
    paths = []
    chunks = range(0, len(results), rows)
    for number, first in enumerate(chunks, start=1):
        part = slice(first, first + rows)
        figure = im.compare(
            images[part],
            {name: column[part] for name, column in columns.items()},
            row_titles=titles[part],
            scale=ranges,
            percentile=percentile,
            cmap=cmap,
            alpha=alpha,
            show_image=pictures[part],
            cell=cell,
        )
        suffix = "" if len(chunks) == 1 else f"-{number}"
        paths.append(im.save(figure, folder / f"explain{suffix}.png"))
    return paths
