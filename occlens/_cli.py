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


def main(argv: list[str] | None = None) -> int:
    """Run the ``occlens`` command; returns the exit code (2 for bad arguments)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
    except OcclensError as error:
        print(f"occlens: error: {error}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
