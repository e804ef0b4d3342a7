"""Checkpoints as torch 2.1 and Lightning wrote them: refused by weights_only, read here without running."""

from __future__ import annotations

import argparse
import pickle
import types

import pytest
import torch
from legacy_marker import Tripwire
from torch.optim.lr_scheduler import OneCycleLR

from models.legacy_pickle import Inert, load_checkpoint, read_tensors
from models.mindeye2.checkpoint import load_published, model_from_state_dict
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2


def _legacy_scheduler_state(model: torch.nn.Module) -> dict:
    """OneCycleLR.state_dict() as torch < 2.4 returned it: ``anneal_func`` a bound method of the scheduler,
    whose optimizer (AdamW) carries state."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    loss = sum(p.float().sum() for p in model.parameters())
    loss.backward()
    opt.step()
    sched.step()
    state = sched.state_dict()
    state["anneal_func"] = types.MethodType(OneCycleLR._annealing_cos, sched)  # pickles as getattr(sched, ...)
    return state


def test_a_mindeye2_checkpoint_with_a_legacy_scheduler_loads_and_runs_nothing(tmp_path):
    torch.manual_seed(0)
    model = MindEye2(standin_config(["subj01"], [37], hidden=16))
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "final_subj01_pretrained_1sess_24bs"
    folder.mkdir()
    path = folder / "last.pth"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "lr_scheduler": _legacy_scheduler_state(model),
                "optimizer_state_dict": {"state": {}}, "hook": Tripwire(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError, match="getattr|Unsupported global"):
        torch.load(path, weights_only=True)
    tensors, skipped = read_tensors(path, ("model_state_dict",))
    want = model.state_dict()
    assert tensors["model_state_dict"].keys() == want.keys()
    assert all(torch.equal(tensors["model_state_dict"][k], v) for k, v in want.items())
    assert "builtins.getattr" in skipped and "legacy_marker.touch" in skipped
    loaded = load_published(path)  # the real loader takes the same path through the fallback
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items())
    assert not marker.exists()
    # The marker works: a plain unpickling runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_lightning_like_ckpt_gives_its_state_dict_only(tmp_path):
    torch.manual_seed(1)
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
             "first_stage_model.decoder.conv_in.bias": torch.randn(5).half()}
    marker = tmp_path / "ran.txt"
    path = tmp_path / "unclip.ckpt"
    torch.save({"state_dict": state, "epoch": 0, "global_step": 110000,
                "hyper_parameters": argparse.Namespace(lr=1e-4, callback=Tripwire(str(marker))),
                "callbacks": {"ModelCheckpoint": Tripwire(str(marker))}, "loops": {"fit_loop": {"state_dict": {}}}},
               path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    got = load_checkpoint(path, ("state_dict",))
    assert set(got) == {"state_dict"} and got["state_dict"].keys() == state.keys()
    assert all(torch.equal(got["state_dict"][k], v) and got["state_dict"][k].dtype == v.dtype for k, v in state.items())
    assert not marker.exists()


def test_a_file_weights_only_accepts_is_read_by_torch_itself_and_odd_files_are_named(tmp_path):
    model = model_from_state_dict(MindEye2(standin_config(["subj01"], [11], hidden=8)).state_dict(), ["subj01"])
    plain = tmp_path / "plain.pth"
    torch.save({"model_state_dict": model.state_dict()}, plain)
    assert set(load_checkpoint(plain)) == {"model_state_dict"}
    not_zip = tmp_path / "old.pth"
    not_zip.write_bytes(pickle.dumps({"model_state_dict": {}}))
    with pytest.raises(ValueError, match="not torch's zip format"):
        read_tensors(not_zip)
    weird = tmp_path / "weird.pth"
    torch.save({"model_state_dict": {"w": torch.ones(2), "oops": Tripwire(str(tmp_path / "x"))}}, weird)
    with pytest.raises(ValueError, match="holds something other than tensors"):
        read_tensors(weird)
    assert not (tmp_path / "x").exists()
    assert repr(Inert()) == "<not loaded: ?>"
