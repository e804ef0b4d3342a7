"""A tiny captioner folder in the published layouts, for tests and for trying the wiring on a CPU: a GIT
with seeded random weights saved as Hugging Face saves it (``config.json``, ``model.safetensors`` or
``pytorch_model.bin``, ``tokenizer.json`` + ``tokenizer_config.json``) and a seeded converter. Its captions
are words drawn from a small vocabulary: they mean nothing; the layout, the loading and the path are real.
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.caption.converter import BigGToL, ConverterConfig, save_converter

WORDS = tuple(("a the of on in with and two man woman dog cat bus train plate pizza table street red blue "
               "green white sitting standing parked next to top field grass water boat kite large small").split())
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tiny_git_config(vocab_size: int, image_side: int = 28, patch: int = 7, vision_width: int = 24):
    """A GIT config a few hundred kilobytes big; (image_side / patch)^2 + 1 image tokens."""
    from transformers import GitConfig

    return GitConfig(vision_config={"hidden_size": vision_width, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": image_side, "patch_size": patch},
                     hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                     vocab_size=vocab_size, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                     pad_token_id=0)


def make_tiny_git(seed: int = 0, image_side: int = 28, patch: int = 7, vision_width: int = 24):
    """(GitForCausalLM, tokenizer), seeded; weights drawn wider than GIT's init so greedy captions vary."""
    from transformers import BertTokenizer, GitForCausalLM

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    torch.manual_seed(seed)
    model = GitForCausalLM(tiny_git_config(len(vocab), image_side, patch, vision_width)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3)
    return model, tokenizer


def write_tiny_captioner(folder: str | Path, seed: int = 0, tokens_in: int = 256, dim_in: int = 1664,
                         pickled: bool = False) -> Path:
    """A captioner folder :meth:`BrainCaptioner.from_folder` loads; ``tokens_in`` x ``dim_in`` brain tokens
    in (the stand-in space's 16 x 64, say), GIT's 17 x 24 vision tokens out. ``pickled``: GIT's weights as
    ``pytorch_model.bin`` (written by torch.save, as older Hugging Face uploads are) instead of safetensors."""
    folder = Path(folder)
    model, tokenizer = make_tiny_git(seed)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if pickled:
        (folder / "model.safetensors").unlink()
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    vision = model.config.vision_config
    tokens_out = (vision.image_size // vision.patch_size) ** 2 + 1
    torch.manual_seed(seed + 1)
    save_converter(BigGToL(ConverterConfig(tokens_in, tokens_out, dim_in, vision.hidden_size)), folder)
    return folder
