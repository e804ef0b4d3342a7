"""``rtdecode bench``: benchmark a stage (rtdecode.tools.bench and the benches beside their stages)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.cli.common import _shape, _threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``bench STAGE [--json] ...``."""
    p = sub.add_parser("bench", help="benchmark a stage; prints a table, or JSON with --json")
    p.add_argument("stage", help="preprocess | endurance | simulate | glm | betas | decoder | wire | console | calibrate | "
                                 "finalize | gpu | contention")
    p.add_argument("--json", action="store_true")
    p.add_argument("--volumes", type=int, default=None)
    p.add_argument("--shape", type=_shape, default=None)
    p.add_argument("--voxels", dest="n_voxels", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None, help="decoder: MindEye2 hidden size (4096 or 1024)")
    p.add_argument("--unclip", action="store_true", default=None, help="decoder: also time unCLIP on the CPU")
    p.add_argument("--out", type=Path, default=None, help="gpu: where its tables go (bench betas: see its --help)")
    p.add_argument("--tr", type=float, default=None, help="contention: the TR the run is written at (default 1.5 s)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="contention: threads of the scanner side and the decoder (default: [threads]; 0: every core)")
    p.add_argument("--load", type=int, default=None, help="contention: competing busy processes (default 1)")
    p.add_argument("--project", action="store_true",
                   help="decoder, calibrate: count the work at full size on the meta device and project it onto "
                        "named GPUs (nothing measured)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    """Run one stage's benchmark (``gpu`` has its own tool; ``betas`` parses its own options: :func:`run_betas`)."""
    from rtdecode.tools.bench import run_stage

    if args.project:
        from rtdecode.tools.bench import run_projection

        run_projection(args.stage, as_json=args.json, hidden=args.hidden, n_voxels=args.n_voxels)
        return 0
    if args.stage == "gpu":  # prints its own JSON object and tables, and writes them under --out
        from rtdecode.tools.gpu_bench import bench_gpu

        bench_gpu(out=args.out or Path("benchmarks/results"), hidden=args.hidden, n_voxels=args.n_voxels)
        return 0
    extra = {"hidden": args.hidden, "unclip": args.unclip} if args.stage == "decoder" else {}
    if args.stage == "calibrate":
        extra = {"hidden": args.hidden}
    if args.stage == "contention":
        extra = {"hidden": args.hidden, "tr_s": args.tr, "threads": args.threads, "load": args.load}
    if args.stage not in ("decoder", "wire", "console", "calibrate", "gpu"):
        extra.update({"volumes": args.volumes, "shape": args.shape})
    run_stage(args.stage, as_json=args.json, n_voxels=args.n_voxels, **extra)
    return 0


def run_betas(argv: list[str]) -> int:
    """``rtdecode bench betas ...``: every option of ``python -m rtdecode.tools.betas_bench`` (docs/glm.md)."""
    from rtdecode.tools.betas_bench import main as bench_betas

    return bench_betas(argv)
