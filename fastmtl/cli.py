"""Command line: ``fastmtl bench combine|step|fd|study|report ...`` (also
``python -m fastmtl ...``)."""

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
    step.add_argument("--backbone", default="resnet18-style",
                      choices=["resnet18-style", "resnet18", "mobilenet"],
                      help="resnet18-style (default: the built-in ResNet-18 layout), or "
                           "torchvision's resnet18 / mobilenet_v3_small (weights=None)")
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

    study = bench_sub.add_parser(
        "study", help="train every method at both levels over seeds; delta-m, time, FD, RS")
    study.add_argument("--dataset", default="multidigits",
                       choices=["multidigits", "scenes", "nyuv2", "cityscapes"])
    study.add_argument("--root", help="folder of the nyuv2/cityscapes .npy files")
    study.add_argument("--quick", action="store_true",
                       help="tiny model and few steps (under 3 minutes on 2 CPU cores)")
    study.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    study.add_argument("--seeds", type=_int_list, help="e.g. 0,1,2 (default: the preset's)")
    study.add_argument("--methods",
                       help="comma-separated combiners/balancers (default: all; ew is always "
                            "added); 'balancer:NAME' forces the balancer of that name")
    study.add_argument("--levels", help="parameter,feature (default both)")
    study.add_argument("--backbone", choices=["resnet18", "mobilenet"])
    study.add_argument("--width", type=int, help="backbone width (resnet18: 64 = torchvision's)")
    study.add_argument("--steps", type=int, help="training steps per run")
    study.add_argument("--batch", type=int, help="batch size")
    study.add_argument("--lr", type=float, help="Adam learning rate")
    study.add_argument("--n-train", type=int, help="training samples (synthetic: generated; "
                                                   "npy: at most this many)")
    study.add_argument("--n-test", type=int, help="held-out samples")
    study.add_argument("--record-every", type=int, help="monitor record interval in steps")
    study.add_argument("--threads", type=int,
                       help="torch threads (default 1 on CPU: see fastmtl.bench.study)")
    study.add_argument("--out", help="run directory (default runs/study_<dataset>_<time>)")
    study.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_argument("--no-report", action="store_true", help="skip the Markdown report")

    report = bench_sub.add_parser("report", help="Markdown report and PNG plots of a study")
    report.add_argument("run_dir", help="a run directory written by `fastmtl bench study`")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.cli_args = list(sys.argv[1:] if argv is None else argv)  # recorded by bench study
    if getattr(args, "device", "cpu").startswith("cuda"):
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
    elif args.bench == "study":
        from .bench import study

        try:
            study.run(args)
        except (FileNotFoundError, ValueError) as exc:
            print(f"fastmtl bench study: {exc}", file=sys.stderr)
            return 2
    elif args.bench == "report":
        from .bench.report import write_report

        try:
            print(write_report(args.run_dir))
        except (FileNotFoundError, ValueError) as exc:
            print(f"fastmtl bench report: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
