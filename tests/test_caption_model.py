"""Captions from brain tokens (models.caption): the bigG -> CLIP-L converter read from MindEye2's published
layout through the safe reader, and GIT in the published Hugging Face layout, loaded strictly, giving what
transformers' own GitForCausalLM gives when handed the same vision-encoder output."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from models.caption import (
    BrainCaptioner,
    convert_bigg_to_l,
    load_converter,
    load_published_converter,
    save_converter,
)
from models.caption.captioner import MAX_LENGTH
from models.caption.tiny import write_tiny_captioner

T_IN, T_OUT, D_IN, D_OUT = 6, 7, 10, 4  # tokens 6 -> 7, channels 10 -> 4: unequal everywhere


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _published_state(seed: int = 0, t_out: int = T_OUT, d_out: int = D_OUT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"linear1.weight": torch.randn(t_out, T_IN, generator=g), "linear1.bias": torch.randn(t_out, generator=g),
            "linear2.weight": torch.randn(d_out, D_IN, generator=g), "linear2.bias": torch.randn(d_out, generator=g)}


def _mindeye2_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MindEye2's CLIPConverter.forward written out: permute, linear1 over tokens, permute back, linear2."""
    x = x.permute(0, 2, 1) @ state["linear1.weight"].T + state["linear1.bias"]
    return x.permute(0, 2, 1) @ state["linear2.weight"].T + state["linear2.bias"]


def test_the_published_converter_file_reads_safely_and_maps_as_mindeye2(tmp_path: Path):
    state = _published_state()
    path = tmp_path / "bigG_to_L_epoch8.pth"
    torch.save({"model_state_dict": state}, path)
    x = torch.randn(3, T_IN, D_IN, generator=torch.Generator().manual_seed(1))
    converter = load_published_converter(path)
    assert (converter.config.tokens_in, converter.config.tokens_out) == (T_IN, T_OUT)
    assert (converter.config.dim_in, converter.config.dim_out) == (D_IN, D_OUT)
    with torch.no_grad():
        torch.testing.assert_close(converter(x), _mindeye2_forward(state, x))
        # converted to safetensors and back: the same map
        again = load_converter(save_converter(converter, tmp_path / "converted"))
        torch.testing.assert_close(again(x), _mindeye2_forward(state, x))
    # a folder holding only the published file loads it too
    assert load_converter(tmp_path).config == converter.config


def test_a_converter_file_with_a_stored_object_loads_without_running_it(tmp_path: Path):
    """MindEye2's files carry training objects beside the weights; weights_only refuses them, and the
    project's reader takes the weights and leaves the objects inert."""
    state = _published_state(2)
    path = tmp_path / "bigG_to_L_epoch8.pth"
    torch.save({"model_state_dict": state, "args": argparse.Namespace(lr=3e-4)}, path)
    x = torch.randn(2, T_IN, D_IN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_published_converter(path)(x), _mindeye2_forward(state, x))


def test_a_converter_state_dict_with_a_wrong_key_is_refused_by_name(tmp_path: Path):
    state = _published_state()
    assert set(convert_bigg_to_l({f"module.{k}": v for k, v in state.items()})) == {
        "tokens.weight", "tokens.bias", "channels.weight", "channels.bias"}
    state["linear3.weight"] = state.pop("linear2.weight")
    path = tmp_path / "bigG_to_L_epoch8.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(ValueError, match=r"bigG_to_L_epoch8\.pth.*unexpected key 'linear3\.weight'"):
        load_published_converter(path)


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory) -> Path:
    return write_tiny_captioner(tmp_path_factory.mktemp("git"), seed=0, tokens_in=T_IN, dim_in=D_IN)


def test_the_captioner_gives_what_transformers_gives_for_the_same_image_embeddings(captioner_folder: Path):
    """transformers' own GitForCausalLM (from_pretrained, vision encoder and all) on pixels, against the
    captioner handed that encoder's output: the same logits, the same greedy ids, the same captions."""
    from transformers import GitForCausalLM

    reference = GitForCausalLM.from_pretrained(str(captioner_folder), local_files_only=True).eval()
    captioner = BrainCaptioner.from_folder(captioner_folder)
    vision = reference.config.vision_config
    pixels = torch.randn(3, 3, vision.image_size, vision.image_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        features = reference.git.image_encoder(pixels).last_hidden_state
        ids = reference.generate(pixel_values=pixels, max_length=MAX_LENGTH, do_sample=False, num_beams=1)
        mine = captioner.generate_ids(features)
        torch.testing.assert_close(mine, ids, rtol=0, atol=0)
        torch.testing.assert_close(captioner.git(input_ids=ids, pixel_values=features[:, None]).logits,
                                   reference(input_ids=ids, pixel_values=pixels).logits)
    assert ids.shape[1] <= MAX_LENGTH == 20
    texts = captioner.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert len(set(texts)) == 3 and all(texts)
    # the whole path: brain tokens -> converter -> the same greedy decoder
    tokens = torch.randn(3, T_IN, D_IN, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        clip_l = captioner.converter(tokens)
    assert captioner.caption(tokens) == [" ".join(t.split()) for t in captioner.tokenizer.batch_decode(
        captioner.generate_ids(clip_l), skip_special_tokens=True)]


def test_the_published_pickled_layout_loads_strictly_and_captions_the_same(tmp_path: Path, captioner_folder: Path):
    """Older uploads are pytorch_model.bin (torch.save of the state dict, with the position_ids buffers
    older transformers saved); read through the safe reader, they caption as the safetensors folder does."""
    folder = write_tiny_captioner(tmp_path / "bin", seed=0, tokens_in=T_IN, dim_in=D_IN, pickled=True)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["git.embeddings.position_ids"] = torch.arange(64)[None]
    torch.save(state, folder / "pytorch_model.bin")
    tokens = torch.randn(2, T_IN, D_IN, generator=torch.Generator().manual_seed(6))
    assert BrainCaptioner.from_folder(folder).caption(tokens) == BrainCaptioner.from_folder(captioner_folder).caption(tokens)
    del state["git.encoder.layer.1.output.dense.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*missing \['git\.encoder\.layer\.1\.output\.dense\.bias'\]"):
        BrainCaptioner.from_folder(folder)
    state["git.encoder.layer.1.output.dense.bias"] = torch.zeros(32)
    state["git.extra.weight"] = torch.zeros(2)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"unexpected \['git\.extra\.weight'\]"):
        BrainCaptioner.from_folder(folder)
    # the vision encoder's weights are not kept, but they are checked: a wrong one means a wrong file
    del state["git.extra.weight"]
    state["git.image_encoder.vision_model.post_layernorm.weight"] = torch.zeros(5)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"post_layernorm\.weight has shape \(5,\), the config says \(24,\)"):
        BrainCaptioner.from_folder(folder)


def test_tokens_of_the_wrong_shape_or_device_are_refused(captioner_folder: Path):
    captioner = BrainCaptioner.from_folder(captioner_folder)
    with pytest.raises(ValueError, match=rf"tokens must be \(N, {T_IN}, {D_IN}\), got \(2, {D_IN}, {T_IN}\)"):
        captioner.caption(torch.zeros(2, D_IN, T_IN))
    with pytest.raises(ValueError, match="tokens are on meta, the captioner on cpu"):
        captioner.caption(torch.zeros(2, T_IN, D_IN, device="meta"))
    from models.caption.converter import same_device

    assert same_device("cpu", torch.device("cpu")) and not same_device("cpu", "meta")


def test_the_caption_path_keeps_to_the_captioners_device_on_meta(captioner_folder: Path):
    """The converter and GIT's forward with the given features, on the meta device, under the check that
    fails any op mixing devices or drawing off the model's device (greedy generate reads values, which meta
    tensors do not hold, so its loop is checked on the CPU by the tests above)."""
    from test_device_discipline import DeviceDiscipline

    captioner = BrainCaptioner.from_folder(captioner_folder, device="meta")
    with DeviceDiscipline("meta") as mode:
        clip_l = captioner.to_clip_l(torch.zeros(2, T_IN, D_IN, device="meta"))
        logits = captioner.git(input_ids=torch.full((2, 3), 2, device="meta"), pixel_values=clip_l[:, None]).logits
    assert mode.faults == []
    assert logits.device.type == "meta" and logits.shape[:2] == (2, captioner.image_tokens + 3)


def test_the_folder_models_download_writes_is_a_captioner(tmp_path: Path):
    """``rtdecode models download git-large-coco`` and ``bigG-to-L`` fill one folder; ``models check`` calls
    it complete only with every configuration and tokenizer file, and the captioner loads it with the
    converter still in its published .pth form."""
    from models.registry import check, local_path

    folder = local_path("git-large-coco", tmp_path).parent
    assert local_path("bigG-to-L", tmp_path).parent == folder
    write_tiny_captioner(folder, seed=1, tokens_in=T_IN, dim_in=D_IN)
    for name in ("bigG_to_L.safetensors", "bigG_to_L.json"):
        (folder / name).unlink()
    # the tiny GIT's vision encoder gives 17 x 24 tokens; a converter of other sizes is refused by name
    torch.save({"model_state_dict": _published_state(7, 17, 24)}, local_path("bigG-to-L", tmp_path))
    status = {f.name: ok for f, _, ok in check(tmp_path)}
    assert status["bigG-to-L"] and not status["git-large-coco"]  # special_tokens_map.json, vocab.txt missing
    for name in ("special_tokens_map.json", "vocab.txt"):
        (folder / name).write_text("{}")
    assert {f.name: ok for f, _, ok in check(tmp_path)}["git-large-coco"]
    captions = BrainCaptioner.from_folder(folder).caption(torch.randn(2, T_IN, D_IN))
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
