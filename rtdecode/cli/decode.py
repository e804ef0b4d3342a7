"""``rtdecode decode``: the decoder process (betas in, retrievals and reconstructions out)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtdecode.base.errors import ConfigError
from rtdecode.base.threads import DEFAULTS
from rtdecode.cli.common import _threads


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``decode --model --gallery --out``."""
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
    p.set_defaults(func=_decode)


def _decode(args: argparse.Namespace) -> int:
    """Run the decoder until it is stopped."""
    import signal

    # Ctrl-C stops the decoder even when its parent ignored SIGINT (a shell's background job, a test
    # runner), which a child otherwise inherits: a stop would then wait for SIGKILL.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from rtdecode.base.threads import apply_role

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
