"""The published files rtdecode can use, where they live, and how to fetch or find them.

Sizes are approximate (from the publications; exact byte counts and checksums are not published
for most of them; torchvision's files carry the first 8 hex digits of their SHA-256 in their names,
checked on download). ``download`` goes through huggingface_hub, or the file's URL for the evaluation
networks, and needs internet; nothing else here touches the network.
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
    sha256: str | None = None  # the whole digest, or its first characters (a prefix is checked as one)
    url: str | None = None  # fetched from this address instead of a Hugging Face repository
    local: str | None = None  # where it lives under --folder, when not at ``path``
    extra: tuple[str, ...] = ()  # small files fetched beside it (configurations, tokenizers), repo paths
    licence: str = ""  # as the publisher states it ("" where we have not checked)

    @property
    def local_path(self) -> str:
        return self.local or self.path

    @property
    def local_files(self) -> tuple[str, ...]:
        """Every file it brings, as local paths under --folder: the weights first, then ``extra`` beside them."""
        home = str(Path(self.local_path).parent) if self.local else ""
        return (self.local_path, *(str(Path(home) / e) if home else e for e in self.extra))


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
    # Captions and refinement (models.caption, models.refine; docs/models.md). The converter lands in
    # GIT's folder so that one folder is the captioner (rtdecode decode --captioner weights/git-large-coco).
    PublishedFile("bigG-to-L", MINDEYE, "bigG_to_L_epoch8.pth", 0.01, "caption",
                  "maps 256x1664 tokens to 257x1024 for captions (optional)",
                  local="git-large-coco/bigG_to_L_epoch8.pth"),
    PublishedFile("git-large-coco", "microsoft/git-large-coco", "model.safetensors", 1.58, "caption",
                  "GIT-large fine-tuned on COCO captions: the captioner's text decoder (fp32)", repo_type="model",
                  local="git-large-coco/model.safetensors", licence="MIT",
                  extra=("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json", "vocab.txt")),
    PublishedFile("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors", 6.94,
                  "refine", "SDXL base 1.0, one file, with its diffusers configurations and tokenizers: refinement",
                  repo_type="model", local="sdxl-base/sd_xl_base_1.0.safetensors",
                  licence="CreativeML Open RAIL++-M",
                  extra=("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                         "text_encoder_2/config.json", "unet/config.json", "vae/config.json",
                         *(f"{t}/{f}" for t in ("tokenizer", "tokenizer_2")
                           for f in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")))),
    PublishedFile("sd-vae", MINDEYE, "sd_image_var_autoenc.pth", 0.33, "vae", "SD VAE for the blurry image"),
    PublishedFile("openclip-bigG", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "open_clip_pytorch_model.bin", 10.2,
                  "clip", "OpenCLIP ViT-bigG-14 (laion2b_s39b_b160k): CLIP image tokens", repo_type="model"),
    # The feature networks of MindEye2's evaluation (rtdecode evaluate; docs/evaluation.md).
    PublishedFile("alexnet", "", "alexnet-owt-7be5be79.pth", 0.23, "metric",
                  "torchvision AlexNet IMAGENET1K_V1: AlexNet(2) and AlexNet(5)", sha256="7be5be79",
                  url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    PublishedFile("inception-v3", "", "inception_v3_google-0cc3c7bd.pth", 0.10, "metric",
                  "torchvision InceptionV3 IMAGENET1K_V1: InceptionV3", sha256="0cc3c7bd",
                  url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"),
    PublishedFile("efficientnet-b1", "", "efficientnet_b1-c27df63c.pth", 0.03, "metric",
                  "torchvision EfficientNet-B1 IMAGENET1K_V2: EffNet-B", sha256="c27df63c",
                  url="https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth"),
    PublishedFile("swav-resnet50", "", "swav_800ep_pretrain.pth.tar", 0.11, "metric",
                  "SwAV ResNet-50 (800 epochs; facebookresearch/swav hub model): SwAV",
                  url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"),
    PublishedFile("clip-vit-l-14", "timm/vit_large_patch14_clip_224.openai", "open_clip_pytorch_model.bin", 1.71,
                  "metric", "OpenAI CLIP ViT-L/14 in open_clip's format: CLIP (2-way)", repo_type="model",
                  local="clip-vit-l-14/open_clip_pytorch_model.bin"),
]}


def entry(name: str) -> PublishedFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model file {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def local_path(name: str, folder: str | Path) -> Path:
    return Path(folder) / entry(name).local_path


def require(name: str, folder: str | Path) -> Path:
    """The local path of ``name``, or one error naming the missing file and the command that fetches it."""
    path = local_path(name, folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({entry(name).description}, about {entry(name).size_gb:g} GB); "
                                f"fetch it with: rtdecode models download {name} --folder {folder}")
    return path


def check(folder: str | Path) -> list[tuple[PublishedFile, Path, bool]]:
    """Every registered file with its expected local path and whether it is there (with its ``extra`` files)."""
    return [(f, Path(folder) / f.local_path, all((Path(folder) / p).is_file() for p in f.local_files))
            for f in REGISTRY.values()]


def download(name: str, folder: str | Path, token: str | None = None) -> Path:  # pragma: no cover - needs internet
    """Fetch ``name`` into ``folder`` (at its local path) through huggingface_hub or its URL."""
    f = entry(name)
    target = local_path(name, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    if f.url:
        from torch.hub import download_url_to_file

        download_url_to_file(f.url, str(target), hash_prefix=f.sha256)  # checks the SHA-256 prefix
        return target
    from huggingface_hub import hf_hub_download

    where = str(target.parent if f.local else folder)
    for small in f.extra:  # the configurations first: a folder with weights but no config is no use
        hf_hub_download(repo_id=f.repo_id, filename=small, repo_type=f.repo_type, local_dir=where, token=token)
    return Path(hf_hub_download(repo_id=f.repo_id, filename=f.path, repo_type=f.repo_type, local_dir=where,
                                token=token))
