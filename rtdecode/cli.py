"""The ``rtdecode`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtdecode.errors import ConfigError, RtdecodeError
from rtdecode.threads import DEFAULTS, MAX_THREADS


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must look like 100x100x52, got {text!r}")
    return parts  # type: ignore[return-value]


def _denoise(text: str) -> str:
    from rtdecode.config import check_denoise

    try:
        return check_denoise(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_list(text: str) -> list[int]:
    try:
        runs = [int(r) for r in text.split(",") if r.strip()]
    except ValueError:
        runs = []
    if not runs or min(runs) < 1:
        raise argparse.ArgumentTypeError(f"expected run numbers from 1, e.g. 1,2,3, got {text!r}")
    return runs


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f"must be seconds after onset, more than 0 and under 100, got {text}")
    return value


def _threads(text: str) -> int:
    if not (text.isdigit() and int(text) <= MAX_THREADS):
        raise argparse.ArgumentTypeError(f"must be 0 (every core) to {MAX_THREADS} threads, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtdecode", description="Real-time fMRI-to-image decoding at the scanner.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="watch the scanner folder and preprocess every volume of a session")
    p.add_argument("--config", required=True, type=Path, help="session configuration (TOML)")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new file")
    p.add_argument("--quiet", action="store_true", help="no per-volume summary line")

    p = sub.add_parser("config", help="write a configuration template, or check a configuration file")
    p.add_argument("action", choices=["template", "check"])
    p.add_argument("path", nargs="?", type=Path, help="file to check (check) or write (template; default: stdout)")

    p = sub.add_parser("simulate", help="simulated subjects, stimuli and scanner runs (no scanner needed)")
    sim = p.add_subparsers(dest="what", required=True)
    q = sim.add_parser("run", help="write a task run of a simulated subject into a folder at TR pace")
    q.add_argument("--out", required=True, type=Path, help="folder to write into (the watch folder)")
    q.add_argument("--truth", type=Path, default=None, help="folder for ground truth (events, motion, true betas)")
    q.add_argument("--stimuli", type=Path, default=None, help="folder to write the shown images into (PNG)")
    q.add_argument("--run", type=int, default=1, help="which run of the visit (1-based)")
    q.add_argument("--runs", type=int, default=11, help="runs in the visit's plan")
    q.add_argument("--volumes", type=int, default=192)
    q.add_argument("--trials", type=int, default=63)
    q.add_argument("--rest", action="store_true", help="no task: motion and noise only")
    q.add_argument("--shape", type=_shape, default=(100, 100, 52), help="voxels, e.g. 100x100x52")
    q.add_argument("--voxel-mm", type=float, default=2.0)
    q.add_argument("--tr", type=float, default=1.5)
    q.add_argument("--speedup", type=float, default=1.0, help="write N times faster than real time")
    q.add_argument("--format", choices=["mosaic", "enhanced", "nifti"], default="mosaic")
    q.add_argument("--series", type=int, default=None, help="DICOM series number (default: the run number)")
    q.add_argument("--pattern", default=None, help="file-name pattern (default: Siemens real-time export)")
    q.add_argument("--max-mm", type=float, default=1.0)
    q.add_argument("--max-deg", type=float, default=1.0)
    q.add_argument("--subject-seed", type=int, default=1, help="which new person of --seed: 1 is sim51 at seed 0 "
                   "(sim151 at seed 1), never a pretraining dataset's person (docs/simulated-brain.md)")
    q.add_argument("--first-person", type=int, default=None, help="number (and seed) of the person for --subject-seed "
                   "1, sim<N>, e.g. a pretraining person's brain on purpose")
    q.add_argument("--participant", default="01/01", help="subject/session labels: the series' SeriesInstanceUID is "
                   "theirs (another participant's series is set aside by the scanner side)")
    q.add_argument("--voxels", type=int, default=2000, help="visual voxels of the simulated subject (at 2 mm)")
    q.add_argument("--reliability", type=float, default=0.3, help="median single-trial reliability")
    q.add_argument("--seed", type=int, default=0)
    q = sim.add_parser("betas", help="write trial-level betas for several subjects and sessions")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("--subjects", type=int, default=4)
    q.add_argument("--sessions", type=int, default=1)
    q.add_argument("--runs", type=int, default=11)
    q.add_argument("--trials", type=int, default=63)
    q.add_argument("--reliability", type=float, default=0.3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--role", choices=("pretrain", "new", "new-overlap", "any"), default="pretrain",
                   help="pretrain: no image of the built-in test pool nor of the new-person pool; new: a person to "
                        "calibrate, whose repeated (held-out) images come from the test pool and the rest from the "
                        "new-person pool (needs --images 2400 for full sessions); new-overlap: the rest from every "
                        "training image, as before issue 35; any: every image (docs/calibration.md)")
    q.add_argument("--images", type=int, default=1200, help="size of the built-in image set to draw from")
    q.add_argument("--first-person", type=int, default=None,
                   help="number (and seed) of the first person, sim<N>; default: new people for this --seed and "
                        "--role (pretrain sim01.., new sim51.., seed 1: sim101.., sim151..)")
    q = sim.add_parser("stimuli", help="write the built-in stimulus images as PNG")
    q.add_argument("--out", required=True, type=Path)
    q.add_argument("-n", type=int, default=1200)

    p = sub.add_parser("glm", help="single-trial betas of a recorded session folder (offline mode)")
    p.add_argument("session", type=Path, help="session folder (.../sub-XX/ses-YY)")
    p.add_argument("--out", type=Path, required=True, help="folder for betas.npy and trials.tsv")
    p.add_argument("--noise-model", choices=["ar1", "ols"], default="ar1")
    p.add_argument("--version", choices=["endofrun", "realtime"], default="endofrun",
                   help="whole-run estimates, or the real-time estimates replayed")
    p.add_argument("--tr", type=float, default=None, help="default: the TR the session was recorded or imported at, "
                   "else 1.5 s")
    p.add_argument("--delay", type=float, default=7.5, help="seconds after onset (realtime version)")
    p.add_argument("--tuning", type=Path, default=None,
                   help="model folder with glm_tuning.npz: its per-voxel HRFs and noise subtraction (docs/glm.md)")
    p.add_argument("--hrf", choices=("glover", "library"), default=None, help="default: library with --tuning")
    p.add_argument("--denoise", type=_denoise, default="auto", help="off | auto | N components (with --tuning)")

    p = sub.add_parser("calibrate", help="fine-tune a pretrained model on one subject's session -> a model folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--session", type=Path, help="a session folder recorded by rtdecode (betas by the offline GLM)")
    src.add_argument("--dataset", type=Path, help="a trial-level dataset (rtdecode simulate betas)")
    src.add_argument("--nsd", type=Path, help="NSD as MindEye2 distributes it (pscotti/mindeyev2 folder)")
    p.add_argument("--subject", required=True, help="subject id (names the new ridge; NSD: 1-8)")
    p.add_argument("--pretrained", type=Path, default=None, help="pretrained model folder (default: from scratch)")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--compare-scratch", action="store_true",
                   help="also train from scratch on the same trials and put both in the report")
    p.add_argument("--holdout", default=None,
                   help="held-out images: runs:N,M (every image of those runs), @FILE (ids, one per line) or "
                        "id,id,... (default: the images shown more than once)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="train even if held-out images are in the pretrained model's training images "
                        "(refused otherwise; the report then says so first)")
    p.add_argument("--tune", default=None, metavar="LRS:EPOCHS",
                   help="pick --lr and --epochs on a validation split of the training trials (never the held-out "
                        "images), e.g. 1e-3,3e-3,1e-2:5,10; --compare-scratch tunes the scratch model on the same grid")
    p.add_argument("--allow-seen-person", action="store_true",
                   help="calibrate a person whose brain or subject name was in pretraining (refused otherwise; the "
                        "first line printed, training.json and the report then say so)")
    p.add_argument("--no-report", action="store_true", help="skip report/report.md and its plots")
    g = p.add_argument_group("the GLM of --session (docs/glm.md)")
    g.add_argument("--glm-hrf", choices=("glover", "library"), default="glover",
                   help="library: tune each voxel's HRF on the session (saved as glm_tuning.npz in --out)")
    g.add_argument("--glm-denoise", type=_denoise, default="off", help="off | auto | N noise components (auto: tuned on the session)")
    g.add_argument("--train-on", choices=("endofrun", "realtime", "both"), default="endofrun",
                   help="whole-run betas, the real-time betas at --train-delay (what the live GLM sends), or both")
    g.add_argument("--train-delay", type=_delay, default=7.5, help="seconds after onset of the real-time betas")
    _training_options(p)

    p = sub.add_parser("glm-tune", help="tune the GLM on a calibration session: each voxel's HRF, noise pool and count")
    p.add_argument("session", type=Path, help="session folder (.../sub-XX/ses-YY)")
    p.add_argument("--out", type=Path, required=True, help="folder for glm_tuning.npz and .json (the model folder)")
    p.add_argument("--tr", type=float, default=None, help="default: the TR the session was recorded or imported at, "
                   "else 1.5 s")
    p.add_argument("--runs", type=_run_list, default=None, help="tune on these runs only, e.g. 1,2,3 (default: all)")
    p.add_argument("--holdout", default=None, help="images left out of every criterion, as calibrate's --holdout: "
                   "runs:N,M, @FILE or id,id,... (default: none; calibrate leaves out its own held-out images)")

    p = sub.add_parser("pretrain", help="train a shared model over several subjects (simulated, NSD or recorded)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="a trial-level dataset (rtdecode simulate betas)")
    src.add_argument("--nsd", type=Path, help="NSD as MindEye2 distributes it (pscotti/mindeyev2 folder)")
    src.add_argument("--sessions", nargs="+", metavar="SUBJECT=FOLDER",
                     help="session folders recorded by rtdecode, one per subject")
    p.add_argument("--subjects", nargs="+", default=[], help="subjects of --dataset or --nsd (NSD: 1-8)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    _training_options(p)

    p = sub.add_parser("decode", help="the decoder process: betas in, retrievals and reconstructions out")
    p.add_argument("--model", required=True, type=Path, help="calibrated model folder")
    p.add_argument("--gallery", required=True, type=Path, help="folder of images to retrieve from")
    p.add_argument("--out", required=True, type=Path, help="folder for results (resumes if it exists)")
    p.add_argument("--betas", default="tcp://127.0.0.1:5556", help="address to bind for betas")
    p.add_argument("--results", default="tcp://127.0.0.1:5557", help="address to bind for results")
    p.add_argument("--policy", default="every", help="reconstructions: every | newest | refine (one per trial: its latest version) | every-N")
    p.add_argument("--unclip", type=Path, default=None, help="converted unCLIP folder (models.unclip.pipeline.convert_unclip)")
    p.add_argument("--sd-vae", type=Path, default=None, help="the SD VAE file, for blurry images without unCLIP")
    p.add_argument("--captioner", type=Path, default=None,
                   help="a caption per trial: GIT-large-COCO with bigG_to_L (models.caption), or the demo's stand-in captioner")
    p.add_argument("--refiner", type=Path, default=None,
                   help="SDXL base (diffusers folder or its single .safetensors) to refine reconstructions with the caption")
    p.add_argument("--refiner-config", type=Path, default=None,
                   help="with a single-file --refiner: SDXL base's configurations and tokenizers (diffusers layout)")
    p.add_argument("--refine", choices=("off", "idle", "always"), default=None,
                   help="refinement: off, idle (only when no beta or first reconstruction waits; the default with "
                        "--refiner) or always (after each reconstruction; delays the next trial's)")
    p.add_argument("--threads", type=_threads, default=DEFAULTS.decoder,
                   help=f"torch, OpenMP and BLAS threads (default {DEFAULTS.decoder}: cores left to the scanner side; "
                        "0: every core)")
    p.add_argument("--curve-secret", type=Path, default=None, help="this host's secret key (rtdecode keys)")
    p.add_argument("--curve-allowed", type=Path, default=None, help="folder of client public keys to accept")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="bind a non-loopback address without CURVE (refused otherwise)")

    p = sub.add_parser("session", help="a session folder: write its finished runs as BIDS (finalize), or bring "
                                       "recorded NIfTI runs in (import)")
    p.add_argument("action", choices=["finalize", "import"])
    p.add_argument("session", type=Path, help="the session folder (.../sub-XX/ses-YY)")
    p.add_argument("--runs", type=int, nargs="*", default=None, help="only these runs (default: all in runs.tsv)")
    p.add_argument("--tr", type=float, default=None, help="repetition time in s, for sessions recorded without it")
    p.add_argument("--gallery", type=Path, default=None, help="the shown images, copied into the dataset's stimuli/")
    p.add_argument("--config", type=Path, default=None,
                   help="the configuration rtdecode run ran with, to close a run it left open (default: the "
                        "session folder's config.toml)")
    # session import (rtdecode/bids/import_command.py); --tr is finalize's too. Here, not there: rtdecode.bids loads nibabel
    p.add_argument("--run", dest="import_runs", nargs="+", action="append", default=None, metavar="FILE",
                   help="import: BOLD.nii[.gz] EVENTS.tsv [CONFOUNDS.tsv], once per run, in order")
    p.add_argument("--mask", type=Path, default=None, help="import: a 3-D NIfTI mask on the runs' grid")
    p.add_argument("--image-column", default="image", help="import: the events column naming each trial's image")
    p.add_argument("--task", default=None, help="import: the task label of a new session folder (default rt)")

    p = sub.add_parser("evaluate", help="score a decoded session as MindEye2 and Real-time MindEye do "
                                        "(docs/evaluation.md)")
    p.add_argument("session", type=Path, help="the session folder (.../sub-XX/ses-YY)")
    p.add_argument("--decoded", required=True, type=Path, help="the decoder's --out, or its folder for this session")
    p.add_argument("--weights", type=Path, default=None,
                   help="folder of the feature networks (rtdecode models download alexnet ...); metrics "
                        "whose file is missing are reported as not available")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: DECODED/.../evaluation)")
    p.add_argument("--gallery", type=Path, default=None, help="the shown images (default: the decoder's gallery)")
    p.add_argument("--model", type=Path, default=None, help="the model folder (default: the decoder's), for retrieval")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the 30 random draws of 50- and 300-way retrieval (default 0; 42 with --draws mindeye2)")
    p.add_argument("--draws", choices=("rtdecode", "mindeye2"), default="rtdecode",
                   help="mindeye2: draw the subsets with numpy's legacy generator as MindEye2's notebook does")
    p.add_argument("--oracle", action="store_true",
                   help="sanity check: score the shown images as their own reconstructions (every figure perfect)")

    p = sub.add_parser("keys", help="create a CURVE key pair for encrypted links between hosts")
    p.add_argument("name", help="whose keys: e.g. scanner, decoder, console")
    p.add_argument("--folder", type=Path, default=Path("keys"))

    for name, text in (("console", "the operator console (Qt): run status, QA plots, decoded trials"),
                       ("display", "the live display (Qt): full-screen reconstructions for a second screen"),
                       ("screenshots", "regenerate docs/screenshots: a simulated run through the real path")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("models", help="the published weights: what is here, and fetching them (internet)")
    p.add_argument("action", choices=["check", "download", "list"])
    p.add_argument("name", nargs="?", help="file to download (see: rtdecode models list)")
    p.add_argument("--folder", type=Path, default=Path("weights"), help="where weights live (default: ./weights)")

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

    p = sub.add_parser("demo", help="a simulated single visit: pretrained model, calibration hour, calibration, "
                                    "a real-time run decoded in another process; summary and report")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="where the visit goes (replaced)")
    p.add_argument("--short", action="store_true", help="a visit of a few minutes (3 short calibration runs)")
    p.add_argument("--calibration-runs", type=int, default=None, help="default 11 (one hour)")
    p.add_argument("--calibrate-epochs", type=int, default=None)
    p.add_argument("--console", dest="console", action="store_true", default=None,
                   help="open the console during the real-time run (default: when a display is present)")
    p.add_argument("--headless", dest="console", action="store_false", help="screenshots instead of the console")
    return parser


GUI_COMMANDS = ("console", "display", "screenshots")  # parsed by gui.app / gui.screenshots themselves


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in GUI_COMMANDS:
        if argv[0] == "screenshots":
            from rtdecode.screenshots import main as screenshots_main

            return screenshots_main(argv[1:])
        _gui_threads(argv[0], argv[1:])
        from gui.app import main as gui_main
        from rtdecode.replay import replayed

        return gui_main(argv[1:], display=argv[0] == "display", replay=replayed)
    if argv[:2] == ["bench", "betas"]:  # every option of python -m rtdecode.betas_bench (docs/glm.md)
        from rtdecode.betas_bench import main as bench_betas

        return bench_betas(argv[2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # matplotlib's INFO notes (e.g. categorical units) are not the operator's; warnings stay
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except RtdecodeError as exc:
        print(f"rtdecode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _gui_threads(command: str, argv: list[str]) -> None:
    """The console's or display's threads (``--threads``, read again by gui.app for its help), set before Qt
    and numpy load."""
    from rtdecode.threads import apply_role

    parser = argparse.ArgumentParser(prog=f"rtdecode {command}", add_help=False)
    parser.add_argument("--threads", type=_threads, default=DEFAULTS.console)
    known, _ = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    apply_role(command, known.threads)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "config":
        from rtdecode.config import SessionConfig, config_to_toml, load_config

        if args.action == "template":
            text = config_to_toml(SessionConfig())
            if args.path:
                args.path.write_text(text)
            else:
                print(text)
            return 0
        if args.path is None:
            raise SystemExit("rtdecode config check: give the configuration file to check")
        cfg = load_config(args.path)
        from rtdecode.storage import SpaceWatch

        space = SpaceWatch(cfg.session_dir, cfg.session.min_free_gb, 0, cfg.scanner.volumes_per_run).at_start()
        if space is not None:
            print(f"warning: {space}")
        from rtdecode.glm.runner import events_warnings

        for line in events_warnings(cfg):  # a run without its events table gives no betas
            print(f"warning: {line}")
        if not cfg.scanner.watch_dir.is_dir():  # `rtdecode run` refuses to start without it
            print(f"warning: scanner.watch_dir: folder does not exist: {cfg.scanner.watch_dir} (create it, or "
                  "point it at the folder the scanner exports to)")
        print(f"{args.path}: ok")
        return 0
    if args.command == "run":
        from rtdecode.config import load_config
        from rtdecode.live import run_scanner_side

        run_scanner_side(load_config(args.config), idle_timeout=args.idle_timeout, quiet=args.quiet)
        return 0
    if args.command == "simulate":
        from rtdecode.simulator.cli import simulate

        return simulate(args)
    if args.command == "glm":
        from rtdecode.glm.offline import write_offline_betas

        write_offline_betas(args.session, args.out, args.noise_model, args.version, args.tr, args.delay, args.tuning,
                            args.hrf, args.denoise)
        return 0
    if args.command == "glm-tune":
        from rtdecode.glm.tuning import describe, tune_session

        try:
            runs, held = _tuning_split(args.session, "glm-tune", args.holdout) if args.holdout else (None, set())
            if args.runs is not None:
                runs = [r for r in args.runs if runs is None or r in runs]
            from calibration.build import standin_tokens

            print(describe(tune_session(args.session, args.tr, out=args.out, runs=runs, held_out=held,
                                        features=standin_tokens)))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"rtdecode glm-tune: {exc}") from None
        print(f"GLM tuning -> {args.out / 'glm_tuning.npz'}")
        return 0
    if args.command in ("calibrate", "pretrain"):
        from rtdecode.threads import apply_role

        apply_role("calibration", args.threads, torch=True)
        return _calibration(args)
    if args.command == "decode":
        import signal

        # Ctrl-C stops the decoder even when its parent ignored SIGINT (a shell's background job, a test
        # runner), which a child otherwise inherits: a stop would then wait for SIGKILL.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from rtdecode.threads import apply_role

        apply_role("decoder", args.threads, torch=True)
        from rtdecode.decoder.service import run_decoder

        try:
            run_decoder(args.model, args.out, args.gallery, args.betas, args.results, args.policy,
                        curve_secret=args.curve_secret, curve_allowed=args.curve_allowed, unclip=args.unclip,
                        sd_vae=args.sd_vae, allow_plaintext=args.allow_plaintext, captioner=args.captioner,
                        refiner=args.refiner, refine=args.refine, refiner_config=args.refiner_config)
        except (FileNotFoundError, ValueError, KeyError) as exc:  # a missing or foreign model, gallery, key
            raise ConfigError(f"rtdecode decode: {exc}") from None
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "session" and args.action == "import":
        from rtdecode.bids.import_command import run as run_import

        return run_import(args)
    if args.command == "session":
        return _finalize(args)
    if args.command == "keys":
        from rtdecode.wire.security import create_keys

        public, secret = create_keys(args.folder, args.name)
        print(f"public key (copy to the other host's allowed/ folder): {public}\nsecret key (stays here): {secret}")
        return 0
    if args.command == "models":
        return _models(args)
    if args.command == "bench":
        from rtdecode.bench import run_stage

        if args.project:
            from rtdecode.bench import run_projection

            run_projection(args.stage, as_json=args.json, hidden=args.hidden, n_voxels=args.n_voxels)
            return 0
        if args.stage == "gpu":  # prints its own JSON object and tables, and writes them under --out
            from rtdecode.gpu_bench import bench_gpu

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
    if args.command == "demo":
        from rtdecode.demo import DemoSettings, run_demo

        settings = DemoSettings.short() if args.short else DemoSettings()
        changes = {"calibration_runs": args.calibration_runs, "calibrate_epochs": args.calibrate_epochs}
        settings = settings.with_(**{k: v for k, v in changes.items() if v is not None})
        run_demo(args.out, settings, console=args.console)
        return 0
    raise AssertionError(args.command)  # pragma: no cover


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default=DEFAULTS.calibration,
                   help=f"torch, OpenMP and BLAS threads (default {DEFAULTS.calibration}; 0: every core; fewer beside "
                        "a live session)")
    p.add_argument("--checkpoint-s", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--hidden", type=int, default=128, help="width of a model trained from scratch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no", help="autocast (Accelerate)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    p.add_argument("--fast", action="store_true",
                   help="the GPU fast path: bf16 autocast (on a GPU), fused AdamW, activation checkpointing")
    p.add_argument("--nsd-sessions", type=int, default=None, help="NSD: first N training sessions (default all)")
    p.add_argument("--embedder", choices=["standin", "openclip"], default=None,
                   help="target token space (default: openclip for NSD, the stand-in otherwise)")
    p.add_argument("--sd-vae", type=Path, default=None,
                   help="the SD VAE file (sd_image_var_autoenc.pth): trains the blurry branch on its latents")


def _calibration(args: argparse.Namespace) -> int:
    from calibration.build import calibrate, load_session, load_trial_dataset, pretrain, token_space
    from calibration.data import concat_trials
    from calibration.nsd import load_nsd_subject, nsd_test_images, without_images
    from calibration.progress import Progress
    from calibration.trainer import TrainConfig
    from calibration.tuning import Grid

    options = dict(epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr, seed=args.seed,
                   checkpoint_s=args.checkpoint_s, cpu=args.cpu)
    if args.fast:
        import torch

        config = TrainConfig.fast(torch.cuda.is_available() and not args.cpu, **options)
    else:
        config = TrainConfig(precision=args.precision, **options)
    cache = args.out / "embedding-cache"
    kind = args.embedder or ("openclip" if args.nsd else "standin")
    if kind != "standin" and not args.nsd:
        raise ConfigError(f"rtdecode {args.command}: --embedder {kind} needs --nsd (recorded sessions and simulated "
                          "datasets use the built-in stimuli's stand-in tokens)")
    try:
        embedder, spec = token_space(kind)
        vae = None
        if args.sd_vae is not None:
            from models.blurry import VaeTargets

            vae = VaeTargets(args.sd_vae)

        def nsd(subject: str):
            if not subject.isdigit():
                raise ValueError(f"NSD subjects are numbers 1-8, got {subject!r}")
            return load_nsd_subject(args.nsd, int(subject), embedder, sessions=args.nsd_sessions, cache=cache,
                                    vae=vae)

        if args.command == "pretrain":
            if args.sessions:
                pairs = [item.split("=", 1) for item in args.sessions]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError(f"--sessions takes SUBJECT=FOLDER items, got {args.sessions}")
                subjects = [load_session(folder, name, cache, vae=vae) for name, folder in pairs]
            elif not args.subjects:
                raise ValueError("--subjects is required with --dataset or --nsd")
            elif args.nsd:
                test = nsd_test_images(args.nsd)
                subjects = []
                for name in args.subjects:
                    kept, dropped = without_images(nsd(name), test)
                    print(f"subj0{name}: {dropped} trials of NSD's {len(test)} test images left out of pretraining")
                    subjects.append(kept)
            else:
                subjects = [load_trial_dataset(args.dataset, s, cache, vae=vae) for s in args.subjects]
            out = pretrain([s.zscored() for s in subjects], args.out, config, hidden=args.hidden,
                           progress=Progress("pretraining"), embedder=spec, resume=args.resume)
        else:
            holdout = args.holdout
            if args.session:
                data = load_session(args.session, args.subject, cache, vae=vae, **_session_glm(args))
            elif args.nsd:
                data = nsd(args.subject)
                if holdout is None and (args.nsd / "wds" / f"subj0{args.subject}" / "new_test").is_dir():
                    # MindEye2's evaluation: the subject's new_test trials, held out whole.
                    test = load_nsd_subject(args.nsd, int(args.subject), embedder, split="new_test", cache=cache,
                                            vae=vae)
                    data = concat_trials(data, test)
                    holdout = set(test.images)
            else:
                data = load_trial_dataset(args.dataset, args.subject, cache, vae=vae)
            out = calibrate(data, args.out, config, pretrained=args.pretrained, resume=args.resume,
                            hidden=args.hidden, progress=Progress("calibrating"),
                            embedder=None if args.pretrained else spec,
                            source=str(args.session or args.nsd or args.dataset),
                            compare_scratch=args.compare_scratch,
                            holdout=holdout,
                            allow_overlap=args.allow_overlap, allow_seen_person=args.allow_seen_person,
                            tune=None if args.tune is None else Grid.parse(args.tune))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(f"rtdecode {args.command}: {exc}") from None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    print(f"model folder: {out}")
    summary = json.loads((out / "training.json").read_text())
    for name, e in (("", summary["evaluation"]), ("from scratch: ", summary.get("scratch") or {})):
        for r in e.get("retrieval", []):
            print(f"{name}held-out {r['n_way']}-way top-1: brain->image {r['top1_brain_to_image']:.0%}, "
                  f"image->brain {r['top1_image_to_brain']:.0%} (chance {r['chance']:.0%})")
        if e.get("blurry"):
            b = e["blurry"]
            print(f"{name}held-out blurry branch: L1 {b['l1']:.3f}, Pearson r {b['pearson']:.2f}, "
                  f"2-way {b['two_way']:.0%} (chance 50%)")
    if args.command == "calibrate" and not args.no_report:
        from calibration.report import write_report

        print(f"report: {write_report(out, session=args.session)}")
    return 0


def _session_glm(args: argparse.Namespace) -> dict:
    """calibrate --session: the GLM settings, the tuning (made on the session itself and saved into --out
    when asked for) and which betas to train on."""
    from rtdecode.config import denoise_count, needs_tuning
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.runner import tuned_count
    from rtdecode.glm.tuning import describe, tune_session

    denoise = args.glm_denoise  # checked by argparse (_denoise)
    tuning = None
    if needs_tuning(args.glm_hrf, denoise):
        from calibration.build import standin_tokens

        runs, held = _tuning_split(args.session, args.subject, args.holdout)
        # Without repeated training images (the default holdout takes them) the images' tokens score the tuning.
        tuning = tune_session(args.session, out=args.out, runs=runs, held_out=held,
                              features=lambda ids: standin_tokens(ids, args.out / "embedding-cache"))
        print(describe(tuning))
    # Subtracted from each volume, as many as were chosen for the betas trained on (fast tier or end of run).
    n = denoise_count(denoise, tuned_count(tuning, "subtract", args.train_delay if args.train_on == "realtime" else None))
    settings = GLMSettings(hrf=args.glm_hrf, denoise=n, delay_s=args.train_delay)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "glm.json").write_text(json.dumps({
        "hrf": args.glm_hrf, "denoise": denoise, "denoise_components": n, "train_on": args.train_on,
        "train_delay_s": args.train_delay,
        "session_config": {"glm": {"hrf": args.glm_hrf, "denoise": denoise, **({"tuning": str(args.out)} if tuning else {}),
                                   "delay_s": args.train_delay}}}, indent=2))
    return {"glm": settings, "train_on": args.train_on, "tuning": tuning}


def _tuning_split(session: Path, subject: str, holdout: str | None) -> tuple[list[int] | None, set[str]]:
    """What calibrate's GLM tuning may see: the same held-out images as training leaves out (calibration/splits.py),
    and with ``runs:N,M`` the other runs only."""
    import numpy as np

    from calibration.data import SubjectData
    from calibration.splits import parse_holdout
    from rtdecode.glm.offline import session_folder, session_trials

    images, runs = session_trials(session_folder(session))
    shown = SubjectData(subject, np.zeros((len(images), 0)), images, np.zeros((len(images), 0, 0)), runs=np.asarray(runs))
    held = parse_holdout(holdout, shown)
    if holdout is not None and holdout.startswith("runs:"):
        out = {int(r) for r in holdout[5:].split(",") if r.strip()}
        return sorted(set(runs) - out), held
    return None, held


def _finalize(args: argparse.Namespace) -> int:
    from rtdecode.bids import finalize_session
    from rtdecode.glm.offline import session_folder

    try:
        folder = session_folder(args.session)
    except ValueError as exc:
        raise ConfigError(f"rtdecode session finalize: {exc}") from None
    if not (folder.path / "session.json").exists():
        raise ConfigError(f"rtdecode session finalize: {folder.path}: not a session folder (no session.json)")
    from rtdecode.storage import FolderLock

    lock = FolderLock(folder.path, "rtdecode session finalize").acquire()  # a live rtdecode run: one line, no start
    try:
        _close_runs(folder, args.config)
        done = finalize_session(folder, args.runs, args.tr, gallery=args.gallery)
    finally:
        lock.release()
    failed = 0
    for run, what in done.items():
        if isinstance(what, str):
            failed += 1
            print(f"run {run}: not finalised: {what}")
        else:
            print(f"run {run}: {len(what)} files")
    print(f"BIDS dataset: {folder.root} (derivatives in {folder.root / 'derivatives' / 'rtdecode'})")
    return 1 if failed else 0


def _close_runs(folder, config_path: Path | None) -> None:
    """A run that ``rtdecode run`` left open (killed) is closed first: its end-of-run betas, its end on record."""
    from rtdecode.scanner.close import close_runs, session_config

    for run, line in close_runs(folder, session_config(folder, config_path)).items():
        print(f"run {run}: {line}")


def _evaluate(args: argparse.Namespace) -> int:
    from rtdecode.evaluate import EvaluationError, evaluate_session

    try:
        scores, paths = evaluate_session(args.session, args.decoded, args.out, args.weights, args.gallery, args.model,
                                         args.seed, args.draws, args.oracle)
    except (EvaluationError, FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"rtdecode evaluate: {exc}") from None
    print(paths["summary_md"].read_text(), end="")
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _models(args: argparse.Namespace) -> int:
    from models import registry

    if args.action == "list":
        for f in registry.REGISTRY.values():
            source = f.url or f"{f.repo_id}/{f.path}"
            print(f"{f.name:34s} {f.size_gb:6.2f} GB  {source}  - {f.description}"
                  + (f" (licence: {f.licence})" if f.licence else ""))
        return 0
    if args.action == "check":
        missing = 0
        for f, path, present in registry.check(args.folder):
            missing += not present
            print(f"{'ok     ' if present else 'missing'}  {f.name:34s} {path}")
        if missing:
            print(f"{missing} file(s) missing; fetch one with: rtdecode models download NAME --folder {args.folder}")
        return 0
    if not args.name:
        raise SystemExit("rtdecode models download: name the file (rtdecode models list shows them)")
    try:
        registry.entry(args.name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    print(registry.download(args.name, args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
