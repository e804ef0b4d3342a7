"""``rtdecode calibrate`` (fine-tune on one subject's session) and ``rtdecode pretrain`` (a shared model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtdecode.base.errors import ConfigError
from rtdecode.base.threads import DEFAULTS
from rtdecode.cli.common import _delay, _denoise, _threads, tuning_split


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    """``calibrate --session|--dataset|--nsd --subject --out``."""
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
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="--session: the session's own images, a folder of PNG or JPEG files named by image id "
                        "(stim-001.png), embedded by --embedder (default: the ids are built-in stimulus ids)")
    g = p.add_argument_group("the GLM of --session (docs/glm.md)")
    g.add_argument("--glm-hrf", choices=("glover", "library"), default="glover",
                   help="library: tune each voxel's HRF on the session (saved as glm_tuning.npz in --out)")
    g.add_argument("--glm-denoise", type=_denoise, default="off", help="off | auto | N noise components (auto: tuned on the session)")
    g.add_argument("--train-on", choices=("endofrun", "realtime", "both"), default="endofrun",
                   help="whole-run betas, the real-time betas at --train-delay (what the live GLM sends), or both")
    g.add_argument("--train-delay", type=_delay, default=7.5, help="seconds after onset of the real-time betas")
    _training_options(p)
    p.set_defaults(func=_calibrate)


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    """``pretrain --dataset|--nsd|--sessions --out``."""
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
    p.set_defaults(func=_calibrate)


def _training_options(p: argparse.ArgumentParser) -> None:
    """The training options calibrate and pretrain share."""
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


def _calibrate(args: argparse.Namespace) -> int:
    """Train with every core (calibrate or pretrain), then print the held-out figures."""
    from rtdecode.base.threads import apply_role

    apply_role("calibration", args.threads, torch=True)
    return _calibration(args)


def _calibration(args: argparse.Namespace) -> int:
    """Load the subjects, train (pretrain, or calibrate one subject), then print the held-out figures."""
    from calibration.build import token_space

    config = _train_config(args)
    cache = args.out / "embedding-cache"
    kind = args.embedder or ("openclip" if args.nsd else "standin")
    images = getattr(args, "images", None)  # calibrate's only
    if images is not None and not args.session:
        raise ConfigError(f"rtdecode {args.command}: --images {images} goes with --session (a recorded session's own "
                          "images); simulated datasets and NSD bring their images")
    if kind != "standin" and not (args.nsd or images):
        raise ConfigError(f"rtdecode {args.command}: --embedder {kind} needs --nsd or --images (recorded sessions "
                          "without --images and simulated datasets use the built-in stimuli's stand-in tokens)")
    try:
        if images is not None:
            from rtdecode.gallery.folder import folder_source

            folder_source(images)  # the folder checked before the GLM runs
        embedder, spec = token_space(kind)
        vae = None
        if args.sd_vae is not None:
            from models.blurry import VaeTargets

            vae = VaeTargets(args.sd_vae)
        if args.command == "pretrain":
            out = _pretrain(args, config, spec, embedder, cache, vae)
        else:
            out = _calibrate_one(args, config, spec, embedder, cache, vae)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ConfigError(f"rtdecode {args.command}: {exc}") from None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    _print_figures(args, out)
    return 0


def _train_config(args: argparse.Namespace):
    """The TrainConfig of the options (``--fast``: the GPU fast path where a GPU is used)."""
    from calibration.trainer import TrainConfig

    options = dict(epochs=args.epochs, batch_size=args.batch_size, max_lr=args.lr, seed=args.seed,
                   checkpoint_s=args.checkpoint_s, cpu=args.cpu)
    if args.fast:
        import torch

        return TrainConfig.fast(torch.cuda.is_available() and not args.cpu, **options)
    return TrainConfig(precision=args.precision, **options)


def _nsd(args: argparse.Namespace, subject: str, embedder, cache: Path, vae):
    """One NSD subject (1-8) of ``--nsd``."""
    from calibration.nsd import load_nsd_subject

    if not subject.isdigit():
        raise ValueError(f"NSD subjects are numbers 1-8, got {subject!r}")
    return load_nsd_subject(args.nsd, int(subject), embedder, sessions=args.nsd_sessions, cache=cache,
                            vae=vae)


def _pretrain(args: argparse.Namespace, config, spec, embedder, cache: Path, vae) -> Path:
    """``pretrain``: the subjects of --sessions, --nsd (less NSD's test images) or --dataset; the model folder."""
    from calibration.build import load_session, load_trial_dataset, pretrain
    from calibration.nsd import nsd_test_images, without_images
    from calibration.progress import Progress

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
            kept, dropped = without_images(_nsd(args, name, embedder, cache, vae), test)
            print(f"subj0{name}: {dropped} trials of NSD's {len(test)} test images left out of pretraining")
            subjects.append(kept)
    else:
        subjects = [load_trial_dataset(args.dataset, s, cache, vae=vae) for s in args.subjects]
    return pretrain([s.zscored() for s in subjects], args.out, config, hidden=args.hidden,
                    progress=Progress("pretraining"), embedder=spec, resume=args.resume)


def _calibrate_one(args: argparse.Namespace, config, spec, embedder, cache: Path, vae) -> Path:
    """``calibrate``: one subject of --session, --nsd (with its new_test trials held out) or --dataset."""
    from calibration.build import calibrate, load_session, load_trial_dataset
    from calibration.data import concat_trials
    from calibration.nsd import load_nsd_subject
    from calibration.progress import Progress
    from calibration.tuning import Grid

    holdout = args.holdout
    if args.session:
        data = load_session(args.session, args.subject, cache, vae=vae, images_dir=args.images, embedder=embedder,
                            **_session_glm(args))
    elif args.nsd:
        data = _nsd(args, args.subject, embedder, cache, vae)
        if holdout is None and (args.nsd / "wds" / f"subj0{args.subject}" / "new_test").is_dir():
            # MindEye2's evaluation: the subject's new_test trials, held out whole.
            test = load_nsd_subject(args.nsd, int(args.subject), embedder, split="new_test", cache=cache,
                                    vae=vae)
            data = concat_trials(data, test)
            holdout = set(test.images)
    else:
        data = load_trial_dataset(args.dataset, args.subject, cache, vae=vae)
    return calibrate(data, args.out, config, pretrained=args.pretrained, resume=args.resume,
                     hidden=args.hidden, progress=Progress("calibrating"),
                     embedder=None if args.pretrained else spec,
                     source=str(args.session or args.nsd or args.dataset),
                     compare_scratch=args.compare_scratch,
                     holdout=holdout,
                     allow_overlap=args.allow_overlap, allow_seen_person=args.allow_seen_person,
                     tune=None if args.tune is None else Grid.parse(args.tune))


def _print_figures(args: argparse.Namespace, out: Path) -> None:
    """The model folder, the held-out retrieval and blurry figures, and calibrate's report."""
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
        from calibration.report import builtin_or_none, write_report
        from rtdecode.gallery.folder import folder_source

        images = builtin_or_none if args.images is None else folder_source(args.images)
        print(f"report: {write_report(out, session=args.session, images=images)}")


def _session_glm(args: argparse.Namespace) -> dict:
    """calibrate --session: the GLM settings, the tuning (made on the session itself and saved into --out
    when asked for) and which betas to train on."""
    from rtdecode.base.config import denoise_count, needs_tuning
    from rtdecode.glm.incremental import GLMSettings
    from rtdecode.glm.runner import tuned_count
    from rtdecode.glm.tuning import describe, tune_session

    denoise = args.glm_denoise  # checked by argparse (_denoise)
    tuning = None
    if needs_tuning(args.glm_hrf, denoise):
        from calibration.build import standin_tokens

        runs, held = tuning_split(args.session, args.subject, args.holdout)
        # Without repeated training images (the default holdout takes them) the images' tokens score the tuning.
        tuning = tune_session(args.session, out=args.out, runs=runs, held_out=held,
                              features=lambda ids: standin_tokens(ids, args.out / "embedding-cache",
                                                                  folder=args.images))
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
