"""Refit engine="auto"'s cost model on this machine, and score it against measured times.

    python benchmarks/cost_model.py            # 26 runs, about 3.5 minutes on a 2-core CPU
    python benchmarks/cost_model.py --quick    # the small models only, about 30 s (their
                                               # parameters are too few to fit the last constant)
    python benchmarks/cost_model.py --smoke    # seconds: two tiny runs, to check the script runs

`occlens._incremental` predicts both exact engines' seconds from counted work (FLOPs, bytes
moved, patch steps, graph nodes, operators and parameter bytes per chunk), each term times a
constant fitted once on one machine. Both predictions are linear in those constants, so this
script measures both engines on each run (medians of interleaved rounds, each round a back to
back call of each engine), refits the constants by least squares on the log of the time
(positive by construction), and prints, for the shipped and the refitted constants: each
engine's prediction error, what auto would pick (the incremental engine only where predicted
`_MARGIN` faster), and that pick's time over the faster engine's and over the batched one's.

The measured times include what each engine does in `occlusion`; the planning gate (whether a
short run is worth tracing) is not scored here: `occlusion.py --auto` scores the whole of auto.
A refit on one day's runs carries that day's state of a shared machine (this CPU's speed drifts
by up to 1.6x between days, memory-bound work the most), so compare the two columns of errors
before trusting either.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch

import occlens as ol
from occlens import _incremental as inc
from occlens import zoo
from occlens._checks import clean_forward
from occlens._occlusion import _grid, decision_chunk
from occlens._targets import as_target

# (model, image side, window, stride): the shapes model and tiny_cnn near the engines' break-even
# point, the reference architectures from 64 to 224 px.
SMALL = (
    ("shapes", 64, 32, 32),
    ("shapes", 64, 16, 16),
    ("shapes", 64, 24, 8),
    ("shapes", 64, 16, 8),
    ("shapes", 64, 12, 6),
    ("shapes", 64, 8, 8),
    ("shapes", 64, 8, 4),
    ("shapes", 64, 4, 2),
    ("tiny_cnn", 32, 16, 16),
    ("tiny_cnn", 32, 8, 8),
    ("tiny_cnn", 32, 8, 4),
    ("tiny_cnn", 32, 4, 4),
    ("tiny_cnn", 32, 4, 2),
)
LARGE = (
    ("alexnet", 64, 16, 8),
    ("alexnet", 64, 8, 4),
    ("alexnet", 112, 16, 8),
    ("alexnet", 224, 32, 32),
    ("alexnet", 224, 16, 16),
    ("resnet18", 64, 16, 8),
    ("resnet18", 64, 8, 4),
    ("resnet18", 112, 16, 8),
    ("resnet18", 112, 32, 16),
    ("resnet18", 224, 32, 32),
    ("vgg16", 64, 16, 8),
    ("vgg16", 112, 32, 32),
    ("vgg16", 112, 16, 8),
)
NAMES = ("flop", "byte", "step", "node", "op", "chunk parameter byte")
SHIPPED = (
    inc._SECONDS_PER_FLOP,
    inc._SECONDS_PER_BYTE,
    inc._SECONDS_PER_STEP,
    inc._SECONDS_PER_NODE,
    inc._SECONDS_PER_OP,
    inc._SECONDS_PER_CHUNK_PARAMETER_BYTE,
)


@dataclass(frozen=True)
class Run:
    label: str
    batched_terms: tuple[float, ...]  # multiply `SHIPPED` (or a refit) and sum: predicted seconds
    incremental_terms: tuple[float, ...]
    batched: float  # measured seconds (median of rounds)
    incremental: float


def terms(work: inc._Work) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The coefficients of each constant in `_Work.batched` and `_Work.incremental`."""
    chunks_b = math.ceil((work.positions + 1) / max(work.batched_chunk, 1))
    batched = (
        work.positions * work.flops_full,
        work.positions * (4 * work.image_bytes + 2 * work.activations),
        0.0,
        0.0,
        chunks_b * work.nodes,
        chunks_b * work.parameters,
    )
    incremental = (
        work.live * work.flops_patch + work.flops_full,
        work.live * work.moved,
        work.chunks * work.steps,
        work.nodes,
        0.0,
        work.chunks * work.parameters,
    )
    return batched, incremental


def work_of(model: torch.nn.Module, x: torch.Tensor, window: int, stride: int) -> inc._Work:
    """The cost model's inputs for `occlusion(model, x, 0, window=, stride=)`, as auto plans."""
    grid = _grid(x, window, stride, "fit", "mean", None)
    clean, forward = clean_forward(model, x, "cost_model", measure=True)
    image = x[:1]
    g = inc.analyse(model, image)
    goal = as_target(0, "cost_model").resolve(clean).select(0)
    geo = inc._prepare(g, grid.bounds(), goal, None)
    chunk = inc._chunk_for(g, geo, image, None)
    return inc._work(g, geo, image, chunk, decision_chunk(forward, x, len(grid) + 1))


def measure(model, x, window: int, stride: int, seconds: float) -> tuple[float, float]:
    """Median seconds of each engine over interleaved rounds (about `seconds` per engine)."""

    def once(engine: str) -> float:
        start = time.perf_counter()
        ol.occlusion(model, x, 0, engine=engine, window=window, stride=stride)
        return time.perf_counter() - start

    warm = max(once("batched"), once("incremental"))
    times: dict[str, list[float]] = {"batched": [], "incremental": []}
    for round_ in range(max(4, min(200, math.ceil(seconds / warm)))):
        for engine in ("batched", "incremental")[:: 1 if round_ % 2 else -1]:
            times[engine].append(once(engine))
    return statistics.median(times["batched"]), statistics.median(times["incremental"])


def predict(coefficients: tuple[float, ...], constants) -> float:
    return sum(c * k for c, k in zip(coefficients, constants, strict=True))


def fit(runs: list[Run]) -> tuple[float, ...]:
    """Constants minimising the squared log error of both engines' predictions over `runs`."""
    rows = [r.batched_terms for r in runs] + [r.incremental_terms for r in runs]
    coefficients = torch.tensor(rows, dtype=torch.float64)
    measured = torch.tensor(
        [r.batched for r in runs] + [r.incremental for r in runs], dtype=torch.float64
    )
    used = coefficients.abs().sum(0) > 0
    log_constants = torch.tensor(SHIPPED, dtype=torch.float64).log().requires_grad_()
    optimiser = torch.optim.LBFGS([log_constants], max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        predicted = coefficients @ (log_constants.exp() * used)
        value = ((predicted.log() - measured.log()) ** 2).mean()
        value.backward()
        return value

    optimiser.step(loss)
    return tuple(float(v) for v in log_constants.detach().exp())


def score(runs: list[Run], constants, label: str) -> None:
    """Each engine's rms log error, and auto's pick over the faster and the batched engine."""
    errors, over_fastest, over_batched, misses = [], [], [], []
    for r in runs:
        b, i = predict(r.batched_terms, constants), predict(r.incremental_terms, constants)
        errors += [math.log(b / r.batched), math.log(i / r.incremental)]
        picked = r.incremental if i <= inc._MARGIN * b else r.batched
        over_fastest.append(picked / min(r.batched, r.incremental))
        over_batched.append(picked / r.batched)
        if over_fastest[-1] > 1.05:
            misses.append(f"{r.label} ({over_fastest[-1]:.2f}x)")
    rms = math.exp(math.sqrt(sum(e * e for e in errors) / len(errors)))
    print(
        f"{label:9s} rms error x{rms:.2f}, worst x{math.exp(max(map(abs, errors))):.2f}; "
        f"pick / faster: worst {max(over_fastest):.2f}; pick / batched: worst "
        f"{max(over_batched):.2f}; misses > 1.05: {', '.join(misses) or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small models only")
    parser.add_argument("--seconds", type=float, default=1.5, help="per engine and run")
    parser.add_argument("--smoke", action="store_true", help="two tiny runs: checks it runs")
    args = parser.parse_args()
    cases = SMALL if args.quick else SMALL + LARGE
    if args.smoke:
        cases, args.seconds = (("tiny_cnn", 32, 8, 8), ("tiny_cnn", 32, 4, 2)), 0.05
    runs = []
    print(
        f"{'run':26s} {'batched s':>9s} {'predicted':>9s} {'increm. s':>9s} {'predicted':>9s} "
        f"{'i/b':>5s} {'pred.':>5s}"
    )
    for name, side, window, stride in cases:
        model = zoo.shapes() if name == "shapes" else getattr(ol.testing, name)()
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        batched_terms, incremental_terms = terms(work_of(model, x, window, stride))
        batched, incremental = measure(model, x, window, stride, args.seconds)
        label = f"{name} {side} w{window} s{stride}"
        runs.append(Run(label, batched_terms, incremental_terms, batched, incremental))
        b, i = predict(batched_terms, SHIPPED), predict(incremental_terms, SHIPPED)
        print(
            f"{label:26s} {batched:9.4f} {b:9.4f} {incremental:9.4f} {i:9.4f} "
            f"{incremental / batched:5.2f} {i / b:5.2f}",
            flush=True,
        )
    refit = fit(runs)
    print(f"\n{'constant':22s} {'shipped':>10s} {'refit':>10s}  (seconds per unit)")
    for name, old, new in zip(NAMES, SHIPPED, refit, strict=True):
        print(f"{name:22s} {old:10.3g} {new:10.3g}")
    print()
    score(runs, SHIPPED, "shipped")
    score(runs, refit, "refit")


if __name__ == "__main__":
    main()
