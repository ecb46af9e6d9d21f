"""Command line: ``fastmtl bench combine|step|fd ...`` (also ``python -m fastmtl ...``)."""

from __future__ import annotations

import argparse
import sys


def _int_list(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmtl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)

    combine = bench_sub.add_parser(
        "combine", help="combiner micro-benchmark: ratios to one J.sum() pass"
    )
    combine.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    combine.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    combine.add_argument("--dtype", default="float32",
                         choices=["float16", "bfloat16", "float32", "float64"])
    combine.add_argument("--T", type=_int_list, help="task counts, e.g. 2,3,10,40")
    combine.add_argument("--P", type=_int_list, help="gradient sizes, e.g. 1e6,1e7")
    combine.add_argument("--repeats", type=int, help="timed repetitions (median is reported)")
    combine.add_argument("--no-peers", action="store_true", help="skip torchjd even if installed")
    combine.add_argument("--json", help="also write the results to this JSON file")
    step = bench_sub.add_parser(
        "step", help="training step: plain vs feature level vs parameter level"
    )
    step.add_argument("--quick", action="store_true", help="a smaller model and batch")
    step.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    step.add_argument("--json", help="also write the results to this JSON file")
    fd = bench_sub.add_parser(
        "fd", help="Feature Disentanglement: ratios to one x.abs().sum() pass"
    )
    fd.add_argument("--quick", action="store_true", help="a smaller tensor [3, 8, 512, 16, 16]")
    fd.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    fd.add_argument("--dtype", default="float32",
                    choices=["float16", "bfloat16", "float32", "float64"])
    fd.add_argument("--shape", type=_int_list,
                    help="feature-gradient shape [T, B, ...] (default 3,64,512,16,16)")
    fd.add_argument("--repeats", type=int, help="timed repetitions (median is reported)")
    fd.add_argument("--no-reference", action="store_true",
                    help="skip timing the pure-PyTorch reference")
    fd.add_argument("--json", help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("fastmtl: --device cuda but no GPU is visible", file=sys.stderr)
            return 2
    if args.bench == "combine":
        from .bench import combine

        combine.run(args)
    elif args.bench == "step":
        from .bench import step

        step.run(args)
    elif args.bench == "fd":
        from .bench import fd

        fd.run(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
