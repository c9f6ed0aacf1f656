"""The ``occlens`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from ._errors import OcclensError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occlens",
        description="Attribution maps as pure functions over torch.func.",
    )
    parser.add_argument("--version", action="version", version=f"occlens {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="explain the shipped sample images with the shipped shapes model",
        description=(
            "Explain the ten shipped sample images with the shipped shapes CNN: class occlusion "
            "maps, DNNBrain's discrepancy grid and a unit's occlusion map, written as one PNG "
            "panel (and the raw maps as .npz). Prints where it wrote them."
        ),
    )
    demo.add_argument(
        "--out", type=Path, default=Path("occlens-out"), help="output folder (default: %(default)s)"
    )
    demo.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    demo.add_argument("--no-progress", action="store_true", help="never show progress bars")
    demo.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch CPU threads (default: torch's own choice; use 1 when other work shares the "
            "cores, since spinning OpenMP threads slow each other down)"
        ),
    )
    _explain_parser(commands)
    return parser


def _demo(args: argparse.Namespace) -> int:
    import torch

    from ._demo import run_demo

    if args.threads is not None:
        if args.threads < 1:
            raise OcclensError(f"occlens demo: --threads must be 1 or more, got {args.threads}.")
        torch.set_num_threads(args.threads)
    report = run_demo(args.out, progress=False if args.no_progress else None)
    if args.json:
        summary = {
            "panel": str(report.panel),
            "maps": str(report.maps),
            "pointing_game": report.pointing_game,
            "seconds": round(report.seconds, 2),
            "samples": [
                {"class": c, "predicted": p, "probability": round(q, 4), "peak_in_box": h}
                for c, p, q, h in zip(
                    report.classes,
                    report.predicted,
                    report.probability,
                    report.peak_in_box,
                    strict=True,
                )
            ],
        }
        print(json.dumps(summary, indent=1))
        return 0
    print("occlens demo: the shipped shapes CNN on its ten shipped sample images")
    print(f"{'sample':>6}  {'class':9}  {'predicted':9}  {'p':>5}  occlusion peak in box")
    for i, (c, p, q, h) in enumerate(
        zip(report.classes, report.predicted, report.probability, report.peak_in_box, strict=True)
    ):
        print(f"{i:>6}  {c:9}  {p:9}  {q:5.2f}  {'yes' if h else 'no'}")
    hits = sum(report.peak_in_box)
    print(f"pointing game: {hits}/{len(report.peak_in_box)} occlusion peaks inside the object box")
    print(f"unit maps: peak unit of the most active channel of {report.unit_layer!r}")
    print(f"wrote {report.panel} and {report.maps} in {report.seconds:.1f} s")
    return 0


EXPLAIN_DESCRIPTION = """\
Explain what drives your model's response to your images, with one or more attribution methods.
For each image it writes the raw maps (STEM.npz: one array per method, named as the method with
'_' for '-', plus 'input', the pixels fed in) and one comparison panel (explain.png): a row per
image, the image and then one heat-map overlay per method, each with its colorbar.

Each image is explained on its own as [C, H, W] pixels in [0, 1] (after --resize and --crop).
Normalisation (--normalize, --mean/--std) is applied inside the model function, so maps are with
respect to those pixels: a fill of 0 is black and the integrated-gradients baseline 0 is a black
image. Every raw map equals the Python call it names, e.g. for guided backpropagation
ol.saliency(ol.guided(model), x, target), with model including the normalisation.

Methods (--method, several allowed):
  occlusion             score drop when a window is covered: --window, --stride, --fill, --edge,
                        --aggregate (Zeiler & Fergus 2014; Captum's Occlusion with --edge cover)
  saliency              gradient of the score w.r.t. the pixels (Simonyan et al. 2014)
  guided                guided backpropagation (Springenberg et al. 2015); not TorchScript
  deconvnet             deconvnet rule (Zeiler & Fergus 2014); not TorchScript
  smoothgrad            saliency averaged over --n noisy copies, noise --sigma (Smilkov et al. 2017)
  integrated-gradients  path integral from --baseline in --steps (Sundararajan et al. 2017)
  input-x-gradient      pixels times gradient (Shrikumar et al. 2016)

Targets (--target):
  predicted             the class the model predicts for each image (default)
  N                     class (output column) N, 0-based
  LAYER:C               the mean activation of channel C of LAYER (names: occlens.layers(model))
  LAYER:C:max|sum       the channel's maximum or sum instead of its mean
  LAYER:C:Y:X           one unit; the panel draws its receptive field box
  LAYER:C:peak          the unit of channel C the clean image drives most
"""

EXPLAIN_EPILOG = """\
examples:
  # the shipped shapes model on a shipped sample (in a source checkout), default methods
  occlens explain occlens.zoo:shapes occlens/zoo/samples/00_circle.png

  # your factory and weights, ImageNet preprocessing, a folder of images, on the GPU
  occlens explain mypkg.models:resnet18 photos/ --weights resnet18.safetensors \\
      --resize 224 --normalize imagenet --device cuda --method occlusion smoothgrad

  # one unit of an intermediate layer, occlusion with noise fills, the occluder grid drawn
  occlens explain mypkg.models:alexnet cat.jpg --target features.10:12:6:6 \\
      --method occlusion --window 11 --stride 2 --fill uniform:0:1 --grid

  # a TorchScript or torch.export file; maps on one scale across images; JSON summary
  occlens explain model.ts images/ --scale shared --json > summary.json

Weights are read as safetensors, or with torch.load(weights_only=True): a file that holds
pickled Python code is refused, never run. Bad arguments exit with code 2 and a one-line error.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _explain_parser(commands) -> None:
    from ._explain import METHODS

    p = commands.add_parser(
        "explain",
        help="explain your model's response to your images (occlusion, gradients, ...)",
        description=EXPLAIN_DESCRIPTION,
        epilog=EXPLAIN_EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "model",
        help="package.module:factory (a function or class returning the model, or a module "
        "instance), a TorchScript file, or a torch.export ExportedProgram file (.pt2)",
    )
    p.add_argument("images", nargs="*", help="image files, or folders of them")

    g = p.add_argument_group("model")
    g.add_argument(
        "--weights",
        metavar="FILE",
        help="state dict to load: .safetensors, or a torch file read with weights_only=True",
    )
    g.add_argument(
        "--model-kwargs",
        metavar="JSON",
        help="keyword arguments for the factory, as a JSON object, e.g. '{\"num_classes\": 10}'",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, mps or auto (cuda when available; default: %(default)s)",
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument(
        "--traceback",
        action="store_true",
        help="when a method fails inside the model, show the full traceback (default: one line)",
    )

    g = p.add_argument_group("target and preprocessing")
    g.add_argument(
        "--target",
        default="predicted",
        help="predicted, a class index, or LAYER:C[:Y:X|:peak|:max|:sum] (default: %(default)s)",
    )
    g.add_argument("--resize", metavar="N|HxW", help="resize every image to N x N or H x W first")
    g.add_argument("--crop", metavar="N|HxW", help="then take the centre N x N or H x W")
    g.add_argument(
        "--grayscale",
        action="store_true",
        help="feed one channel, the luma 0.299 R + 0.587 G + 0.114 B (default: RGB)",
    )
    g.add_argument(
        "--normalize",
        choices=("none", "imagenet"),
        default="none",
        help="imagenet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) (default: none)",
    )
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted inside the model")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std divided by inside the model")

    g = p.add_argument_group("methods")
    g.add_argument(
        "--method",
        "-m",
        dest="methods",
        action="extend",
        nargs="+",
        metavar="METHOD",
        help=f"one or more of {', '.join(METHODS)}, or all (comma-separated also works; "
        "default: occlusion saliency guided integrated-gradients)",
    )
    g.add_argument(
        "--key", type=int, default=0, help="seed for smoothgrad and uniform fills (default: 0)"
    )

    g = p.add_argument_group("occlusion")
    g.add_argument(
        "--window", metavar="N|HxW", help="occluder size (default: 1/8 of the shorter image side)"
    )
    g.add_argument("--stride", metavar="N|HxW", help="occluder step (default: half the window)")
    g.add_argument(
        "--fill",
        default="mean",
        help="what covers the window: a number, R,G,B, mean (the image's mean colour), "
        "blur:SIGMA or uniform:LO:HI (fresh noise per window from --key) (default: %(default)s)",
    )
    g.add_argument(
        "--edge",
        choices=("fit", "cover"),
        default="cover",
        help="fit: only whole windows (DNNBrain, xplique); cover: clipped last windows so every "
        "pixel is covered (Captum) (default: %(default)s)",
    )
    g.add_argument(
        "--aggregate",
        choices=("mean", "sum", "grid", "center"),
        default="mean",
        help="per pixel, the mean (Captum) or sum (xplique) over the windows covering it; grid: "
        "one value per position (DNNBrain); center: at window centres (default: %(default)s)",
    )
    g.add_argument("--absolute", action="store_true", help="take |score drop| per window first")

    g = p.add_argument_group("gradient methods")
    g.add_argument(
        "--n", type=int, default=50, help="smoothgrad: noisy copies (default: %(default)s)"
    )
    g.add_argument(
        "--sigma",
        type=float,
        default=0.15,
        help="smoothgrad: noise std, as a fraction of the image's value range (default: 0.15)",
    )
    g.add_argument(
        "--smooth-kind",
        choices=("mean", "square", "var"),
        default="mean",
        help="smoothgrad: mean (SmoothGrad), square (SmoothGrad-Squared) or var (VarGrad)",
    )
    g.add_argument(
        "--smooth-base",
        choices=("saliency", "guided", "deconvnet", "input-x-gradient"),
        default="saliency",
        help="smoothgrad: the method averaged (default: %(default)s)",
    )
    g.add_argument(
        "--steps", type=int, default=50, help="integrated gradients: steps (default: %(default)s)"
    )
    g.add_argument(
        "--baseline",
        default="0",
        help="integrated gradients: start point, a number, R,G,B, mean or blur:SIGMA "
        "(default: 0, black)",
    )

    g = p.add_argument_group("output")
    g.add_argument(
        "--out", type=Path, default=Path("occlens-out"), help="output folder (default: %(default)s)"
    )
    g.add_argument(
        "--raw",
        choices=("npz", "safetensors", "both", "none"),
        default="npz",
        help="format of the raw maps (default: %(default)s)",
    )
    g.add_argument(
        "--scale",
        default="per-map",
        help="per-map: each map over its own range; shared: one range per method across all "
        "images, so raw scales compare; or a number, the vmax of every map (default: %(default)s)",
    )
    g.add_argument(
        "--percentile",
        type=float,
        default=99.0,
        help="colour range up to this percentile of |map|, so that a few outliers do not wash "
        "out the rest; 100 is the maximum (default: %(default)s)",
    )
    g.add_argument(
        "--reduce",
        choices=("auto", "abs-max", "sum", "l2", "mean"),
        default="auto",
        help="how gradient maps [C, H, W] are shown as [H, W]: auto is sum for integrated-"
        "gradients and input-x-gradient, max |.| over channels otherwise (raw maps keep C)",
    )
    g.add_argument(
        "--cmap", help="colormap for every map (default: RdBu_r signed, inferno unsigned)"
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=0.8,
        help="map opacity where the map is strongest; weaker values show more of the (gray) "
        "image (default: %(default)s)",
    )
    g.add_argument(
        "--cell", type=int, default=192, help="panel cell size in pixels (default: %(default)s)"
    )
    g.add_argument(
        "--rows", type=int, default=8, help="images per panel file (default: %(default)s)"
    )
    g.add_argument("--grid", action="store_true", help="draw the occluder grid on the image")
    g.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: on a terminal, for long runs)",
    )


def _device(text: str):
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise OcclensError(
            f"occlens explain(--device): unknown device {text!r}; "
            "use cpu, cuda, cuda:N, mps or auto."
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }.get(device.type, False)
    if device.type == "cuda" and available and device.index is not None:
        available = device.index < torch.cuda.device_count()
    if not available:
        raise OcclensError(
            f"occlens explain(--device): {text!r} is not available on this machine; "
            "use --device cpu (or auto)."
        )
    return device


def _positive(value: int | float, name: str) -> None:
    if value <= 0:
        raise OcclensError(
            f"occlens explain({name}): must be positive, got {value}; pass a value > 0."
        )


def _explain(args: argparse.Namespace) -> int:
    import time

    import torch

    from . import fills as ol_fills
    from . import image as im
    from ._explain import (
        DEFAULT_METHODS,
        METHODS,
        PYTHON_CALLS,
        ExplainOptions,
        collect_images,
        explain,
        key_name,
        parse_fill,
        parse_size,
        parse_target,
        python_call,
        stems,
        write_panels,
        write_raw,
    )
    from ._model_loading import load_model, parse_kwargs

    start = time.perf_counter()
    if args.threads is not None:
        if args.threads < 1:
            raise OcclensError(
                f"occlens explain(--threads): must be 1 or more, got {args.threads}."
            )
        torch.set_num_threads(args.threads)
    images_given = list(args.images)
    method_words = []
    for item in args.methods or []:  # `--method a b IMAGE`: nargs="+" swallows trailing images
        if item.lower().replace("_", "-") not in (*METHODS, "all") and Path(item).exists():
            images_given.append(item)
        else:
            method_words.append(item)
    if not images_given:
        raise OcclensError(
            "occlens explain(images): no image given; pass image files or folders after the model."
        )
    methods: list[str] = []
    for item in method_words or list(DEFAULT_METHODS):
        for name in item.split(","):
            name = name.strip().lower().replace("_", "-")
            expanded = list(METHODS) if name == "all" else [name] if name else []
            for m in expanded:
                if m not in METHODS:
                    hint = (
                        " (an image? --method takes every word after it: put the images before "
                        "--method, or end its list with --)"
                        if "/" in m or "." in m
                        else ""
                    )
                    raise OcclensError(
                        f"occlens explain(--method): unknown method {m!r}{hint}; use one of "
                        f"{', '.join(METHODS)} or all."
                    )
                if m not in methods:
                    methods.append(m)
    for value, name in (
        (args.n, "--n"),
        (args.steps, "--steps"),
        (args.cell, "--cell"),
        (args.rows, "--rows"),
    ):
        _positive(value, name)
    if not args.sigma >= 0:
        raise OcclensError(f"occlens explain(--sigma): got {args.sigma}; pass a value >= 0.")
    if not 0 <= args.alpha <= 1:
        raise OcclensError(f"occlens explain(--alpha): got {args.alpha}; pass a value in [0, 1].")
    if not 0 < args.percentile <= 100:
        raise OcclensError(f"occlens explain(--percentile): got {args.percentile}; pass (0, 100].")
    scale: str | float = args.scale
    if args.scale not in ("per-map", "shared"):
        try:
            scale = float(args.scale)
        except ValueError:
            scale = -1.0
        if not (scale >= 0 and scale != float("inf")):
            raise OcclensError(
                f"occlens explain(--scale): got {args.scale!r}; "
                "use per-map, shared or a number > 0."
            )
    if args.normalize == "imagenet" and (args.mean or args.std):
        raise OcclensError(
            "occlens explain(--normalize): --normalize imagenet and --mean/--std both given; "
            "pick one."
        )
    from ._explain import _numbers

    mean = tuple(_numbers(args.mean, "--mean")) if args.mean else None
    std = tuple(_numbers(args.std, "--std")) if args.std else None
    if args.normalize == "imagenet":
        mean, std = im.IMAGENET_MEAN, im.IMAGENET_STD
    if std is not None and not all(s > 0 for s in std):
        raise OcclensError(f"occlens explain(--std): got {args.std!r}; every std must be > 0.")
    baseline = parse_fill(args.baseline, "--baseline")
    if isinstance(baseline, ol_fills.Uniform):
        raise OcclensError(
            "occlens explain(--baseline): a uniform baseline is random, not a point; "
            "pass a number, R,G,B, mean or blur:SIGMA."
        )
    spec = parse_target(args.target)
    images = collect_images(images_given)
    device = _device(args.device)
    options = ExplainOptions(
        methods=tuple(methods),
        window=parse_size(args.window, "--window") if args.window else None,
        stride=parse_size(args.stride, "--stride") if args.stride else None,
        fill=parse_fill(args.fill),
        edge=args.edge,
        aggregate=args.aggregate,
        absolute=args.absolute,
        n=args.n,
        sigma=args.sigma,
        smooth_kind=args.smooth_kind,
        smooth_base=args.smooth_base,
        steps=args.steps,
        baseline=baseline,
        key=args.key,
        progress=args.progress,
        resize=parse_size(args.resize, "--resize") if args.resize else None,
        crop=parse_size(args.crop, "--crop") if args.crop else None,
        mean=mean,
        std=std,
        grayscale=args.grayscale,
        reduce=args.reduce,
        traceback=args.traceback,
        device=device,
    )
    weights_kwargs = parse_kwargs(args.model_kwargs)
    loaded = load_model(args.model, weights=args.weights, kwargs=weights_kwargs, device=device)
    results = explain(loaded, images, spec, options, show_progress=args.progress)
    names = stems([r.path for r in results])
    formats = {"npz": ["npz"], "safetensors": ["safetensors"], "both": ["npz", "safetensors"]}
    raw_paths = [
        write_raw(r, args.out, stem, formats.get(args.raw, []))
        for r, stem in zip(results, names, strict=True)
    ]
    panels = write_panels(
        results,
        names,
        args.out,
        options,
        scale=scale,
        percentile=args.percentile,
        cmap=args.cmap,
        alpha=args.alpha,
        cell=args.cell,
        rows=args.rows,
        grid=args.grid,
    )
    seconds = time.perf_counter() - start
    if args.json:
        summary = {
            "model": args.model,
            "model_kind": loaded.kind,
            "device": str(device),
            "target": spec.text,
            "methods": list(methods),
            "python": {key_name(m): PYTHON_CALLS[m] for m in methods},
            "panels": [str(p) for p in panels],
            "seconds": round(seconds, 3),
            "images": [
                {
                    "path": str(r.path),
                    "input_shape": list(r.image.shape),
                    "target": r.target,
                    "score": r.score,
                    "predicted": r.predicted,
                    "probability": r.probability,
                    "raw": [str(p) for p in paths],
                    "rf_box": list(r.unit_box) if r.unit_box is not None else None,
                    "maps": {
                        key_name(name): {
                            "shape": list(m.shape),
                            "min": float(m.min()),
                            "max": float(m.max()),
                            "sum": float(m.double().sum()),
                            "seconds": round(r.seconds[name], 4),
                            "python": python_call(name, options, tuple(r.image.shape[-2:])),
                        }
                        for name, m in r.maps.items()
                    },
                }
                for r, paths in zip(results, raw_paths, strict=True)
            ],
        }
        print(json.dumps(summary, indent=1))
        return 0
    print(f"occlens explain: {args.model} ({loaded.kind}) on {device}, {', '.join(methods)}")
    for r, paths in zip(results, raw_paths, strict=True):
        extra = (
            f", p={r.probability:.3f}"
            if r.probability is not None and "predicted" in r.target
            else ""
        )
        where = f" -> {', '.join(str(p) for p in paths)}" if paths else ""
        print(f"  {r.path}: {r.target}, score {r.score:.4g}{extra}{where}")
    print(f"wrote {', '.join(str(p) for p in panels)} in {seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``occlens`` command; returns the exit code.

    0: done; 2: bad arguments (one line on stderr); 1: a method failed inside the model (one line;
    ``--traceback`` shows where); 130: interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "explain":
            return _explain(args)
    except OcclensError as error:
        message = " ".join(str(error).split())
        print(f"occlens: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from ._explain import MethodFailed

        if not isinstance(error, MethodFailed):
            raise
        print(f"occlens: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("occlens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `occlens explain ... --json | head`
        sys.stderr.close()
        return 0
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
