"""The captioner's work counted at full size on the meta device (models.projection): no weights, no GPU.

GIT-large-COCO's published sizes (its config.json): a 6-layer, 768-wide text decoder over 30,522 word
pieces, fed 257 x 1024 tokens through its visual projection; the ViT-L/14 vision encoder is not kept.
Greedy decoding to ``max_length`` 20 (the start token counts): one pass over the 257 image tokens and the
start token, then one cached pass per further token, 19 passes in all when no caption ends early (the
most work a caption takes).
"""

from __future__ import annotations

import torch

from models.caption.captioner import MAX_LENGTH, GivenVisualFeatures
from models.caption.converter import BigGToL
from models.projection import count_flops, param_bytes

GIT_LARGE_COCO = {"vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                    "num_hidden_layers": 24, "patch_size": 14, "image_size": 224},
                  "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 3072,
                  "vocab_size": 30522, "max_position_embeddings": 1024, "bos_token_id": 101, "eos_token_id": 102,
                  "pad_token_id": 0}


def caption_rows(config: dict | None = None, max_length: int = MAX_LENGTH) -> dict:
    """(name, FLOPs, bytes moved) rows for one caption at batch 1, and the bf16 weights it holds."""
    from transformers import GitConfig, GitForCausalLM

    with torch.device("meta"):
        git = GitForCausalLM(GitConfig(**(config or GIT_LARGE_COCO))).eval()
        converter = BigGToL().eval()
    git.git.image_encoder = GivenVisualFeatures()
    held: dict = {}
    with torch.no_grad():
        tokens = torch.zeros(1, converter.config.tokens_in, converter.config.dim_in, device="meta")
        convert = count_flops(lambda: held.setdefault("clip_l", converter(tokens)))
        start = torch.full((1, 1), git.config.bos_token_id, device="meta")

        def prefix() -> None:
            held["out"] = git(input_ids=start, pixel_values=held["clip_l"][:, None], use_cache=True)

        first = count_flops(prefix)
        step = count_flops(lambda: git(input_ids=start, cache=held["out"].cache, use_cache=True))
    git_bytes, conv_bytes = param_bytes(git), param_bytes(converter)
    steps = max_length - 2  # the start token and the prefix's own next token are the first two
    rows = [("bigG -> CLIP-L converter", convert, conv_bytes),
            ("GIT: image tokens + start token (one pass)", first, git_bytes),
            (f"GIT: {steps} more tokens, cached (greedy, max_length {max_length})", steps * step, steps * git_bytes)]
    rows.append(("caption, all of it", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    return {"rows": rows, "weights_bf16_gb": (git_bytes + conv_bytes) / 1e9,
            "params": (git_bytes + conv_bytes) // 2}


def random_captioner(device: torch.device | str, dtype: torch.dtype, seed: int = 0, tiny: bool = False):
    """A BrainCaptioner of GIT-large-COCO's sizes (or the tiny test sizes) with seeded random weights made on
    ``device``, for timing and memory (``rtdecode bench gpu``): random weights never end a caption early, so
    each one takes all 20 tokens. Its words mean nothing."""
    from transformers import BertTokenizer, GitConfig, GitForCausalLM

    from models.caption.captioner import BrainCaptioner
    from models.caption.converter import ConverterConfig
    from models.caption.tiny import tiny_git_config
    from models.devices import build_on_device

    config = tiny_git_config(64) if tiny else GitConfig(**GIT_LARGE_COCO)
    conv = ConverterConfig(6, 17, 10, 24) if tiny else ConverterConfig()

    def make() -> torch.nn.Module:
        git = GitForCausalLM(config)
        git.git.image_encoder = GivenVisualFeatures()  # never built at full size on the host, never kept
        return torch.nn.ModuleList([git, BigGToL(conv)])

    git, converter = build_on_device(make, device, dtype, seed)
    names = [f"w{i}" for i in range(config.vocab_size)]
    for token, index in (("[PAD]", 0), ("[UNK]", 1), ("[MASK]", 4), ("[CLS]", config.bos_token_id),
                         ("[SEP]", config.eos_token_id)):
        names[index] = token
    vocab = {name: i for i, name in enumerate(names)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    return BrainCaptioner(git.eval().requires_grad_(False), tokenizer, converter.eval().requires_grad_(False))
