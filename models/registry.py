"""The published files rtdecode can use, where they live, and how to fetch or find them.

Sizes are approximate (from the publications; exact byte counts and checksums are not published
for most of them). ``download`` goes through huggingface_hub and needs internet; nothing else here
touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PublishedFile:
    name: str  # what users type: rtdecode models download NAME
    repo_id: str
    path: str  # path inside the repository
    size_gb: float  # approximate
    kind: str
    description: str
    repo_type: str = "dataset"
    sha256: str | None = None


MINDEYE = "pscotti/mindeyev2"
REGISTRY: dict[str, PublishedFile] = {f.name: f for f in [
    *[PublishedFile(f"mindeye2-multisubject-subj0{s}", MINDEYE, f"train_logs/final_multisubject_subj0{s}/last.pth",
                    10.3, "mindeye2", f"pretrained on 7 NSD subjects (all but subj0{s}); 4096 hidden, blurry branch")
      for s in (1, 2, 5, 7)],
    *[PublishedFile(f"mindeye2-subj0{s}-{n}sess", MINDEYE, f"train_logs/final_subj0{s}_pretrained_{n}sess_24bs/last.pth",
                    8.9, "mindeye2", f"subj0{s} fine-tuned on {n} session(s) from the multi-subject model")
      for s in (1, 2, 5, 7) for n in (1, 40)],
    PublishedFile("mindeye2-multisubject-1024", MINDEYE, "train_logs/multisubject_subj01_1024hid_nolow_300ep/last.pth",
                  3.3, "mindeye2", "1024 hidden, no blurry branch (the size Real-time MindEye uses)"),
    PublishedFile("unclip", MINDEYE, "unclip6_epoch0_step110000.ckpt", 18.0, "unclip",
                  "SDXL unCLIP conditioned on OpenCLIP bigG image tokens (sgm layout)"),
    PublishedFile("bigG-to-L", MINDEYE, "bigG_to_L_epoch8.pth", 0.01, "caption",
                  "maps 256x1664 tokens to 257x1024 for captions (optional)"),
    PublishedFile("sd-vae", MINDEYE, "sd_image_var_autoenc.pth", 0.33, "vae", "SD VAE for the blurry image"),
    PublishedFile("openclip-bigG", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "open_clip_pytorch_model.bin", 10.2,
                  "clip", "OpenCLIP ViT-bigG-14 (laion2b_s39b_b160k): CLIP image tokens", repo_type="model"),
]}


def entry(name: str) -> PublishedFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model file {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def local_path(name: str, folder: str | Path) -> Path:
    return Path(folder) / entry(name).path


def require(name: str, folder: str | Path) -> Path:
    """The local path of ``name``, or one error naming the missing file and the command that fetches it."""
    path = local_path(name, folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({entry(name).description}, about {entry(name).size_gb:g} GB); "
                                f"fetch it with: rtdecode models download {name} --folder {folder}")
    return path


def check(folder: str | Path) -> list[tuple[PublishedFile, Path, bool]]:
    """Every registered file with its expected local path and whether it is there."""
    return [(f, Path(folder) / f.path, (Path(folder) / f.path).is_file()) for f in REGISTRY.values()]


def download(name: str, folder: str | Path, token: str | None = None) -> Path:  # pragma: no cover - needs internet
    """Fetch ``name`` into ``folder`` (keeping the repository's path) through huggingface_hub."""
    from huggingface_hub import hf_hub_download

    f = entry(name)
    return Path(hf_hub_download(repo_id=f.repo_id, filename=f.path, repo_type=f.repo_type,
                                local_dir=str(folder), token=token))
