"""Occlusion throughput: occlens vs Captum vs the raw batched-forward limit, ratios from one run.

    python benchmarks/occlusion.py                 # AlexNet and VGG16 references at 224 px
    python benchmarks/occlusion.py --models alexnet --window 16 --stride 8 --rounds 5
    python benchmarks/occlusion.py --smoke         # seconds: a tiny model, to check the script runs

The limit is what no occlusion implementation can beat on this machine: pushing as many images
as there are occluder positions through the model at its fastest batch size (batched, no
autograd, nothing else). Methods run interleaved in rounds, and each keeps its fastest round, so
slow spells of a shared machine hit them all alike.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from collections.abc import Callable

import torch

import occlens as ol

DEFAULT_GRIDS = {"alexnet": (32, 16), "vgg16": (56, 28), "resnet18": (32, 16), "tiny_cnn": (6, 3)}
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_batch(model, image: torch.Tensor, images: int) -> int:
    """The batch size in `BATCHES` with the fastest forward pass per image (two passes each)."""
    per_image = {}
    with torch.no_grad():
        for size in BATCHES:
            batch = image.expand(size, *image.shape).contiguous()
            calls = max(1, min(images, 2 * BATCHES[-1]) // size)
            model(batch)
            per_image[size] = seconds(lambda b=batch, c=calls: [model(b) for _ in range(c)])
            per_image[size] /= calls * size
    return min(per_image, key=per_image.get)


def batched_forward(model, image: torch.Tensor, images: int, size: int) -> float:
    """Seconds to push `images` copies of `image` through the model, `size` at a time."""
    batch = image.expand(size, *image.shape).contiguous()
    calls = math.ceil(images / size)
    with torch.no_grad():
        spent = seconds(lambda: [model(batch) for _ in range(calls)])
    return spent * images / (calls * size)


def captum_occlusion(model, image, target, window, stride, per_eval):
    from captum.attr import Occlusion

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Occlusion(model).attribute(
            image[None],
            sliding_window_shapes=(image.shape[0], window, window),
            strides=(1, stride, stride),
            target=target,
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )[0, 0]


def bench_model(name, model, size, window, stride, captum_batches, rounds) -> dict[str, float]:
    """Time every method once per round, methods interleaved; keep each method's fastest round."""
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    target = 1
    positions = (math.ceil((size - window) / stride) + 1) ** 2  # edge="cover", as Captum
    maps: dict[str, torch.Tensor] = {}
    batch = best_batch(model, image, positions)

    def limit() -> float:
        return batched_forward(model, image, positions, batch)

    def ours() -> float:
        return seconds(
            lambda: maps.__setitem__(
                "occlens",
                ol.occlusion(
                    model,
                    image,
                    target,
                    window=window,
                    stride=stride,
                    edge="cover",
                    aggregate="mean",
                ),
            )
        )

    def theirs(per_eval: int) -> Callable[[], float]:
        return lambda: seconds(
            lambda: maps.__setitem__(
                per_eval, captum_occlusion(model, image, target, window, stride, per_eval)
            )
        )

    methods = {"limit: positions x batched forward": limit, "occlens (chunk_size auto)": ours}
    methods |= {f"captum Occlusion ppe={p}": theirs(p) for p in captum_batches}
    ours()  # warm-up
    times: dict[str, list[float]] = {label: [] for label in methods}
    for _ in range(rounds):
        for label, run in methods.items():
            times[label].append(run())
    best = {label: min(values) for label, values in times.items()}
    floor = best["limit: positions x batched forward"]
    captum_best = min(v for k, v in best.items() if k.startswith("captum"))

    print(
        f"\n{name} at {size}x{size}, window {window}, stride {stride}: {positions} positions, "
        f"best of {rounds} interleaved rounds"
    )
    print(f"{'method':42s} {'seconds':>8s} {'ms/pos':>8s} {'x limit':>8s} {'x captum':>9s}  note")
    for label, value in best.items():
        note = ""
        if label.startswith("limit"):
            note = f"batch {batch}, the fastest of {BATCHES}"
        elif label.startswith("captum"):
            ref = maps[int(label.rsplit("=", 1)[1])]
            error = float((maps["occlens"] - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
            note = f"max rel diff to occlens {error:.1e}"
        print(
            f"{label:42s} {value:8.2f} {1000 * value / positions:8.2f} "
            f"{value / floor:8.2f} {value / captum_best:9.2f}  {note}"
        )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["alexnet", "vgg16"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, help="default: per model, see DEFAULT_GRIDS")
    parser.add_argument("--stride", type=int, help="default: per model, see DEFAULT_GRIDS")
    parser.add_argument(
        "--captum", type=int, nargs="+", default=[1, 16, 64], help="perturbations_per_eval values"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, tiny image: checks the script runs"
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; 'x captum' is against Captum's best"
    )
    if args.smoke:
        bench_model("tiny_cnn", ol.testing.tiny_cnn(), 24, 6, 3, [1, 16], 1)
        return
    for name in args.models:
        window, stride = DEFAULT_GRIDS.get(name, (32, 16))
        window, stride = args.window or window, args.stride or stride
        model = getattr(ol.testing, name)()
        bench_model(name, model, args.size, window, stride, args.captum, args.rounds)


if __name__ == "__main__":
    main()
