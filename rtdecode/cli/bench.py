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
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="betas: simulated visits to average (default 0)")
    p.add_argument("--out", type=Path, default=None, help="betas: write results.json and table.md here")
    p.add_argument("--tr", type=float, default=None, help="contention: the TR the run is written at (default 1.5 s)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="contention: threads of the scanner side and the decoder (default: [threads]; 0: every core)")
    p.add_argument("--load", type=int, default=None, help="contention: competing busy processes (default 1)")
    p.add_argument("--project", action="store_true",
                   help="decoder, calibrate: count the work at full size on the meta device and project it onto "
                        "named GPUs (nothing measured)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    """Run one stage's benchmark (``betas`` and ``gpu`` have their own tools)."""
    if args.stage == "betas":
        from rtdecode.tools.betas_bench import main as bench_betas

        argv = ["--seeds", *map(str, args.seeds or [0])] + (["--out", str(args.out)] if args.out else []) \
            + (["--voxels", str(args.n_voxels)] if args.n_voxels else [])
        return bench_betas(argv)
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
