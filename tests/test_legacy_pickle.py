"""Checkpoints as torch 2.1 and Lightning wrote them: refused by weights_only, read here without running;
and hostile files, written opcode by opcode, that the reader refuses in one line naming the file, holding
little memory and changing nothing of its own."""

from __future__ import annotations

import argparse
import inspect
import pickle
import pickletools
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from legacy_marker import (
    ANNEAL_FUNC,
    Tripwire,
    call,
    checkpoint,
    dictionary,
    glob,
    integer,
    pickled,
    storage,
    tensor,
    text,
    torch_file,
    tup,
)
from torch.optim.lr_scheduler import OneCycleLR

from models.legacy_pickle import Inert, load_checkpoint, read_tensors
from models.mindeye2.checkpoint import load_published, model_from_state_dict
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2

MIB_FLOATS = 262144  # 1 MiB of float32


def _rss_mb() -> float:
    """This process's resident memory now (Linux), file-backed pages of every mapping included."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _refusal(path, reader=load_checkpoint) -> str:
    with pytest.raises(ValueError) as refused:
        reader(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def _torch21_scheduler_state(model: torch.nn.Module) -> tuple[dict, dict]:
    """OneCycleLR.state_dict() as torch 2.1 returned it, and the AdamW state saved beside it.

    torch 2.1 set ``self.anneal_func = self._annealing_cos``; ``_annealing_cos`` is a staticmethod, so that
    is the plain function ``OneCycleLR._annealing_cos``, and state_dict() (``__dict__`` less the optimizer)
    held it. torch 2.4 replaced it with ``_anneal_func_type``, a string."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    sum(p.float().sum() for p in model.parameters()).backward()
    opt.step()
    sched.step()
    assert isinstance(OneCycleLR.__dict__["_annealing_cos"], staticmethod)
    state = {k: v for k, v in sched.state_dict().items() if k != "_anneal_func_type"}
    state["anneal_func"] = sched._annealing_cos
    assert type(state["anneal_func"]) is types.FunctionType  # not a bound method: no scheduler, no optimizer
    return state, opt.state_dict()


def test_a_torch_2_1_mindeye2_checkpoint_loads_and_runs_nothing(tmp_path):
    torch.manual_seed(0)
    model = MindEye2(standin_config(["subj01"], [37], hidden=16))
    scheduler, optimizer = _torch21_scheduler_state(model)
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "final_subj01_pretrained_1sess_24bs"
    folder.mkdir()
    path = folder / "last.pth"
    # As MindEye2's save_ckpt writes it, plus a tripwire that writes the marker when anything runs it.
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer,
                "lr_scheduler": scheduler, "train_losses": [0.9, 0.7], "test_losses": [0.8], "lrs": [4e-5, 1e-3],
                "hook": Tripwire(str(marker))}, path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    # Protocol 2 stores a function reached through its class as getattr(OneCycleLR, '_annealing_cos').
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data) if "PUT" not in op.name]
    at = ops.index(("GLOBAL", "__builtin__ getattr"))
    assert ops[at + 1:at + 5] == [("GLOBAL", "torch.optim.lr_scheduler OneCycleLR"),
                                  ("BINUNICODE", "_annealing_cos"), ("TUPLE2", None), ("REDUCE", None)]
    with pytest.raises(pickle.UnpicklingError, match="getattr"):
        torch.load(path, weights_only=True)
    tensors, skipped = read_tensors(path, ("model_state_dict",))
    want = model.state_dict()
    assert tensors["model_state_dict"].keys() == want.keys()
    assert all(torch.equal(tensors["model_state_dict"][k], v) for k, v in want.items())
    assert skipped == {"builtins.getattr", "torch.optim.lr_scheduler.OneCycleLR", "legacy_marker.touch"}
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
    assert "not torch's zip format" in _refusal(not_zip, read_tensors)
    weird = tmp_path / "weird.pth"
    torch.save({"model_state_dict": {"w": torch.ones(2), "oops": Tripwire(str(tmp_path / "x"))}}, weird)
    assert "holds something other than tensors" in _refusal(weird, read_tensors)
    assert not (tmp_path / "x").exists()
    assert repr(Inert()) == "<not loaded: ?>"


def test_a_storage_referenced_256_times_is_mapped_once(tmp_path):
    values = np.random.default_rng(4).standard_normal(MIB_FLOATS).astype(np.float32)
    state = [(text(f"layers.{i}.weight"), tensor(storage("0", MIB_FLOATS), (512, 512))) for i in range(256)]
    path = torch_file(tmp_path / "shared.pth", checkpoint(*state), {"0": values.tobytes()})
    assert path.stat().st_size < 1.1e6
    before = _rss_mb()
    got = load_checkpoint(path)["model_state_dict"]
    for weight in got.values():
        weight.sum()  # reads every page, as copying into a model does
    grew = _rss_mb() - before
    assert len(got) == 256 and torch.equal(got["layers.7.weight"].flatten(), torch.from_numpy(values))
    assert len({t.untyped_storage().data_ptr() for t in got.values()}) == 1
    assert grew < 64, f"+{grew:.0f} MB held for a 1 MB file"


def test_build_on_a_tensor_cannot_grow_its_storage(tmp_path):
    grown = 64 * 2**20  # elements: 256 MB of float32
    empty = tensor(storage("0", 0), (0,)) + pickle.BINPUT + b"\x01"
    build = tup(pickle.BINGET + b"\x01", integer(0), tup(integer(grown)), tup(integer(1))) + pickle.BUILD
    path = torch_file(tmp_path / "grow.pth", checkpoint((text("w"), empty + build)), {"0": b""})
    assert path.stat().st_size < 1500
    before = _rss_mb()
    with pytest.raises(ValueError) as refused:
        load_checkpoint(path)["model_state_dict"]["w"].add_(1)  # writing commits whatever it grew to
    assert str(refused.value) == f"{path}: BUILD on Tensor (only on placeholders and state dicts)"
    assert _rss_mb() - before < 20
    # An empty storage is not resizable either, so nothing else could grow it.
    path = torch_file(tmp_path / "empty.pth", checkpoint((text("w"), tensor(storage("0", 0), (0,)))), {"0": b""})
    assert not load_checkpoint(path)["model_state_dict"]["w"].untyped_storage().resizable()


def _reader_state() -> dict[str, object]:
    """Every function's defaults and attributes, and every class's namespace, in the reader's modules."""
    found = {}
    for module in [sys.modules[n] for n in ("models.legacy_pickle", "models.legacy_unpickler") if n in sys.modules]:
        for name, obj in vars(module).items():
            if inspect.isfunction(obj):
                found[f"{module.__name__}.{name}"] = (obj.__defaults__, obj.__kwdefaults__, dict(obj.__dict__))
            elif inspect.isclass(obj) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = dict(vars(obj))
    return found


@pytest.mark.parametrize("target, state", [
    (glob("torch._utils", "_rebuild_tensor_v2"), tup(pickle.NONE, dictionary((text("__defaults__"), tup(integer(7)))))),
    (glob("torch._utils", "_rebuild_parameter"), dictionary((text("hook"), integer(1)))),
    (glob("torch", "FloatStorage"), tup(pickle.NONE, dictionary((text("dtype"), integer(1))))),
], ids=["defaults of a rebuilder", "attribute of a rebuilder", "a storage type's dtype"])
def test_a_file_cannot_write_into_the_reader(tmp_path, target, state):
    values = np.arange(4, dtype=np.float32)
    pkl = checkpoint((text("w"), tensor(storage("0", 4), (4,))), before=target + state + pickle.BUILD + pickle.POP)
    path = torch_file(tmp_path / "build.pth", pkl, {"0": values.tobytes()})
    before = _reader_state()
    assert "BUILD on" in _refusal(path)
    assert _reader_state() == before


@pytest.mark.parametrize("hostile, expected", [
    pytest.param("aliases", "its storages claim 2097152 bytes, more than the file's", id="aliases"),
    pytest.param("claimed size", "archive/data/0 claims 1073741824 bytes from byte", id="claimed size"),
    pytest.param("compressed pickle", "archive/data.pkl is compressed; torch writes its records uncompressed",
                 id="compressed pickle"),
])
def test_storages_claim_no_more_bytes_than_the_file_holds(tmp_path, hostile, expected):
    values = np.zeros(MIB_FLOATS, dtype=np.float32).tobytes()
    path = tmp_path / "claims.pth"
    if hostile == "aliases":  # 64 names in the central directory for one 1 MiB record
        state = [(text(f"w{k}"), tensor(storage(str(k), MIB_FLOATS), (MIB_FLOATS,))) for k in range(64)]
        torch_file(path, checkpoint(*state), {"0": values},
                   aliases={f"archive/data/{k}": "archive/data/0" for k in range(1, 64)})
    elif hostile == "claimed size":  # the central directory says 1 GiB; the record holds 4 KiB
        torch_file(path, checkpoint((text("w"), tensor(storage("0", 2**28), (2**28,)))), {"0": values[:4096]},
                   claims={"archive/data/0": 2**30})
    else:  # 16 MiB of bytes in the pickle, deflated to a few KiB
        blob = pickle.BINBYTES + struct.pack("<I", 2**24) + bytes(2**24) + pickle.POP
        torch_file(path, checkpoint(before=blob), deflate=("archive/data.pkl",))
        assert path.stat().st_size < 100_000
    assert expected in _refusal(path)


REFUSALS = {  # name: (pickle, storages, what the one line says)
    "a storage not in the archive": (checkpoint((text("w"), tensor(storage("9", 4), (4,)))), {"0": bytes(16)},
                                     "archive/data/9 is not in the archive"),
    "a storage key that is a path": (checkpoint((text("w"), tensor(storage("../../etc/passwd", 4), (4,)))),
                                     {"0": bytes(16)}, "storage key '../../etc/passwd' is not a short name"),
    "a pickle cut short": (checkpoint((text("w"), tensor(storage("0", 4), (4,))))[:-40], {"0": bytes(16)},
                           "the pickle ends early"),
    "an offset that is text": (checkpoint((text("w"), call(
        glob("torch._utils", "_rebuild_tensor_v2"), storage("0", 4), text("x"), tup(integer(4)), tup(integer(1))))),
        {"0": bytes(16)}, "storage offset is not a count"),
    "a view past its storage": (checkpoint((text("w"), tensor(storage("0", 4), (5,)))), {"0": bytes(16)},
                                "RuntimeError: setStorage"),
    "a record shorter than its storage": (checkpoint((text("w"), tensor(storage("0", 400), (400,)))),
                                          {"0": bytes(16)}, "archive/data/0 holds 16 bytes, 1600 expected"),
    "one storage as two dtypes": (checkpoint((text("a"), tensor(storage("0", 4), (4,))),
                                             (text("b"), tensor(storage("0", 4, "IntStorage"), (4,)))),
                                  {"0": bytes(16)}, "referenced as 4 x torch.float32 and as 4 x torch.int32"),
    "BUILD on OrderedDict itself": (checkpoint(before=glob("collections", "OrderedDict") + tup(
        pickle.NONE, dictionary((text("x"), integer(1)))) + pickle.BUILD + pickle.POP), {}, "BUILD on function"),
    "SETITEM on a tensor": (checkpoint((text("w"), tensor(storage("0", 4), (4,)) + integer(0)
                                        + pickle.BINFLOAT + struct.pack(">d", 5.0) + pickle.SETITEM)),
                            {"0": bytes(16)}, "SETITEM on Tensor (only on dicts)"),
    "APPEND on a dict": (checkpoint(before=pickle.EMPTY_DICT + integer(1) + pickle.APPEND + pickle.POP), {},
                         "APPEND on dict (only on lists)"),
    "calling a storage type": (checkpoint(before=call(glob("torch", "FloatStorage")) + pickle.POP), {},
                               "calling StorageType is not allowed"),
    "an extension code": (checkpoint(before=pickle.EXT1 + b"\x01" + pickle.POP), {},
                          "pickle opcode EXT1 is not allowed"),
    "a persistent id that is text": (checkpoint(before=text("x") + pickle.BINPERSID + pickle.POP), {},
                                     "unexpected persistent id (a str, not a storage's)"),
    "no dict at the top": (pickled(tup(ANNEAL_FUNC)), {}, "expected a dict at the top, found tuple"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_refusal_is_one_line_naming_the_file(tmp_path, name):
    pkl, storages, expected = REFUSALS[name]
    path = torch_file(tmp_path / "hostile.pth", pkl, storages)
    assert expected in _refusal(path)
