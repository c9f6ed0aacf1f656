"""Gradient attributions: occlens vs Captum vs the hand-written batched-autograd limit.

    python benchmarks/gradients.py                     # AlexNet and ResNet18 references at 224 px
    python benchmarks/gradients.py --models resnet18 --batch 4 --rounds 5
    python benchmarks/gradients.py --smoke             # seconds: a tiny model, checks it runs

The limit is one plain ``torch.autograd.grad`` of the summed target logits over the same images
(for SmoothGrad and IG: all ``n * B`` images, in batches of the fastest size), with nothing else:
no checks, no noise, no accumulation. Methods run interleaved in rounds and each keeps its fastest
round, so slow spells of a shared machine hit them all alike. "captum best / this" above 1 means
occlens is faster than Captum's best setting.
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

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def backward(model, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    leaf = images.detach().requires_grad_()
    scores = model(leaf)[torch.arange(len(leaf)), targets].sum()
    (grad,) = torch.autograd.grad(scores, leaf)
    return grad


def best_batch(model, image: torch.Tensor, images: int) -> int:
    """The batch size with the fastest forward + backward per image (up to `images`)."""
    per_image = {}
    for size in (s for s in BATCHES if s <= images):
        batch = image.expand(size, *image.shape).contiguous()
        targets = torch.zeros(size, dtype=torch.long)
        backward(model, batch, targets)
        per_image[size] = seconds(lambda b=batch, t=targets: backward(model, b, t)) / size
    return min(per_image, key=per_image.get)


def limit(model, x: torch.Tensor, targets: torch.Tensor, copies: int, size: int) -> float:
    """Seconds for one backward per image over `copies` copies of the batch, `size` at a time."""
    images = x.repeat(copies, 1, 1, 1)
    labels = targets.repeat(copies)
    start = time.perf_counter()
    for first in range(0, len(images), size):
        backward(model, images[first : first + size], labels[first : first + size])
    return time.perf_counter() - start


def captum(explainer, x: torch.Tensor, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return explainer.attribute(x.clone(), **kwargs).detach()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def functional_rectifiers(model: torch.nn.Module) -> int:
    """How many ReLUs `model` calls as functions or methods (F.relu, torch.relu, x.relu())."""
    graph = torch.fx.symbolic_trace(model).graph
    return sum(
        1
        for node in graph.nodes
        if node.op in ("call_function", "call_method") and "relu" in str(node.target)
    )


def bench_model(name, model, x, samples, steps, settings, rounds) -> None:
    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

    batch = len(x)
    targets = torch.arange(batch) % 10
    size = best_batch(model, x[0], samples * batch)
    guided = ol.guided(model)
    maps: dict[str, torch.Tensor] = {}

    def keep(label, fn):
        return lambda: seconds(lambda: maps.__setitem__(label, fn()))

    groups: dict[str, dict[str, Callable[[], float]]] = {
        "saliency": {
            "limit": lambda: limit(model, x, targets, 1, batch),
            "occlens": keep("s/occlens", lambda: ol.saliency(model, x, targets)),
            "captum Saliency": keep(
                "s/captum", lambda: captum(Saliency(model), x, target=targets, abs=False)
            ),
        },
        "guided": {
            "limit": lambda: limit(model, x, targets, 1, batch),
            "occlens": keep("g/occlens", lambda: ol.saliency(guided, x, targets)),
            "captum GuidedBackprop": keep(
                "g/captum", lambda: captum(GuidedBackprop(model), x, target=targets)
            ),
        },
        f"SmoothGrad n={samples}": {
            "limit": lambda: limit(model, x, targets, samples, size),
            **{
                f"occlens chunk_size={c}": keep(
                    f"sg/{c}",
                    lambda c=c: ol.smoothgrad(n=samples, sigma=0.15, chunk_size=c)(ol.saliency)(
                        model, x, targets, key=0
                    ),
                )
                for c in settings
            },
            **{
                f"captum NoiseTunnel nt_samples_batch_size={c}": keep(
                    f"nt/{c}",
                    lambda c=c: captum(
                        NoiseTunnel(Saliency(model)),
                        x,
                        nt_type="smoothgrad",
                        nt_samples=samples,
                        nt_samples_batch_size=c,
                        stdevs=0.15,
                        target=targets,
                        abs=False,
                    ),
                )
                for c in settings
            },
        },
        f"IG steps={steps}": {
            "limit": lambda: limit(model, x, targets, steps, size),
            **{
                f"occlens chunk_size={c}": keep(
                    f"ig/{c}",
                    lambda c=c: ol.integrated_gradients(
                        model, x, targets, steps=steps, chunk_size=c
                    ),
                )
                for c in settings
            },
            **{
                f"captum IntegratedGradients internal_batch_size={c}": keep(
                    f"cig/{c}",
                    lambda c=c: captum(
                        IntegratedGradients(model),
                        x,
                        target=targets,
                        n_steps=steps,
                        internal_batch_size=None if c is None else c * batch,
                    ),
                )
                for c in settings
            },
        },
    }
    print(
        f"\n{name}: {batch} images of {x.shape[-1]} px, best of {rounds} interleaved rounds; "
        f"limit batch {size} for {samples * batch} / {steps * batch} images",
        flush=True,
    )
    for group in groups.values():  # warm-up
        next(iter(group.values()))()
    times = {g: dict.fromkeys(group, math.inf) for g, group in groups.items()}
    for _ in range(rounds):
        for g, group in groups.items():
            for label, run in group.items():
                times[g][label] = min(times[g][label], run())
    print(
        f"{'method':24s} {'implementation':52s} {'seconds':>8s} {'x limit':>8s} "
        f"{'captum best / this':>19s}"
    )
    for g, best in times.items():
        floor = best["limit"]
        captum_best = min(v for k, v in best.items() if k.startswith("captum"))
        for label, value in best.items():
            print(
                f"{g:24s} {label:52s} {value:8.3f} {value / floor:8.2f} "
                f"{captum_best / value:19.2f}",
                flush=True,
            )
    print("agreement with Captum (max |diff| / max |captum|):")
    print(f"  saliency {relative(maps['s/occlens'], maps['s/captum']):.1e}")
    functional = functional_rectifiers(model)
    why = (
        f" (by design: {functional} of the model's rectifiers are functional calls, which "
        f"Captum's GuidedBackprop leaves plain; it overrides nn.ReLU modules only)"
        if functional
        else ""
    )
    print(f"  guided   {relative(maps['g/occlens'], maps['g/captum']):.1e}{why}")
    ig = next(k for k in maps if k.startswith("ig/"))
    cig = next(k for k in maps if k.startswith("cig/"))
    print(f"  IG       {relative(maps[ig], maps[cig]):.1e} (Gauss-Legendre in both)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["alexnet", "resnet18"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad's n")
    parser.add_argument("--steps", type=int, default=50, help="IG's steps")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["none", "10"],
        help="chunk settings tried on both sides: 'none' is each library's default; a number is "
        "noisy copies (SmoothGrad) or integration points (IG) per pass",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model: checks the script runs")
    args = parser.parse_args()
    settings = [None if s == "none" else int(s) for s in args.settings]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    if args.smoke:
        x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
        bench_model("tiny_cnn", ol.testing.tiny_cnn(), x, 8, 8, [None, 4], 1)
        return
    for name in args.models:
        model = getattr(ol.testing, name)()
        x = torch.rand(
            args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
        )
        bench_model(name, model, x, args.samples, args.steps, settings, args.rounds)


if __name__ == "__main__":
    main()
