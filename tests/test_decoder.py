"""Decoder service over real sockets: acknowledged betas, results to several subscribers, exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from models.folder import write_model_folder
from models.mindeye2.config import MindEye2Config, standin_config
from models.mindeye2.model import MindEye2
from rtdecode.decoder.core import Decoder
from rtdecode.decoder.service import DecoderService
from rtdecode.protocol import Message, decode_png, encode
from rtdecode.reliable import BetaSender
from rtdecode.simulator.stimuli import StimulusSet
from rtdecode.transport import Subscriber

N_VOXELS = 53


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny calibrated-model folder in the stand-in token space (16 tokens x 64)."""
    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                                tmp_path_factory.mktemp("model"), "sim01")
    gallery = tmp_path_factory.mktemp("gallery")
    StimulusSet().save(gallery, range(12))
    return folder, gallery


def _beta(run: int, trial: int, rng) -> Message:
    return Message("beta", {"run": run, "trial": trial, "image": f"sim-{trial:05d}", "version": "realtime"},
                   arrays={"beta": rng.normal(size=N_VOXELS).astype(np.float32)})


def _pump_until(sender: BetaSender, done, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done():
        sender.pump(timeout_ms=50)


def _collect(subs: list[Subscriber], got: list[list], enough, seconds: float, poll_ms: int) -> None:
    """Receive on every subscriber into its list until ``enough(got)`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not enough(got):
        for g, sub in zip(got, subs, strict=True):
            msg = sub.recv(timeout_ms=poll_ms)
            if msg is not None:
                g.append(msg)


def test_betas_to_decoder_to_two_subscribers(tmp_path, model_folder, rng):
    folder, gallery = model_folder
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), tmp_path / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=0.2)
    subs = [Subscriber(service.publisher.address) for _ in range(2)]
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    sender = BetaSender(service.receiver.address, tmp_path / "acked.keys", resend_s=1.0)
    try:
        time.sleep(0.3)
        for trial in range(5):
            sender.send(_beta(1, trial, rng))
        _pump_until(sender, lambda: not sender.outbox, 30)
        got = [[], []]
        _collect(subs, got, lambda got: min(sum(m.type == "result" for m in g) for g in got) >= 10, 20, 50)
    finally:
        service.stop()
        thread.join(timeout=10)
        sender.close()
        for sub in subs:
            sub.close()
    assert not sender.outbox and len(sender.acked.keys) == 5
    for g in got:
        results = [m for m in g if m.type == "result"]
        assert sorted((m.fields["trial"], m.fields["stage"]) for m in results) == \
            sorted((t, s) for t in range(5) for s in ("retrieval", "reconstruction"))
        retrieval = next(m for m in results if m.fields["stage"] == "retrieval")
        assert len(retrieval.fields["top_ids"]) == 5 and retrieval.fields["top_ids"][0].startswith("sim-")
        recon = next(m for m in results if m.fields["stage"] == "reconstruction")
        assert decode_png(recon.images["reconstruction"]).shape == (128, 128, 3)
        assert any(m.type == "heartbeat" for m in g)
    assert len((tmp_path / "out" / "results.tsv").read_text().splitlines()) == 6


def test_decoder_killed_mid_run_decodes_every_beta_exactly_once(tmp_path, model_folder, rng):
    folder, gallery = model_folder
    ctx = zmq.Context.instance()
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(folder), "--gallery", str(gallery),
           "--out", str(out), "--betas", f"tcp://127.0.0.1:{port}", "--results", "tcp://127.0.0.1:0"]
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
    sender = BetaSender(f"tcp://127.0.0.1:{port}", tmp_path / "acked.keys", resend_s=0.5)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for trial in range(6):
            sender.send(_beta(2, trial, rng))
            sender.pump(timeout_ms=30)
        _pump_until(sender, lambda: len(sender.acked.keys) >= 3, 60)
        proc.send_signal(signal.SIGKILL)  # mid-run: some betas decoded, maybe one half-done
        proc.wait(timeout=10)
        for trial in range(6, 16):  # the scanner side goes on while the decoder is down
            sender.send(_beta(2, trial, rng))
            sender.pump(timeout_ms=30)
        assert 3 <= len(sender.acked.keys) < 16 and sender.outbox
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _pump_until(sender, lambda: not sender.outbox, 90)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list((out / "images").glob("*.png"))) < 16:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        sender.close()
    rows = (out / "results.tsv").read_text().splitlines()[1:]
    keys = [r.split("\t")[0] for r in rows]
    assert sorted(keys) == sorted(f"2:{t}:realtime" for t in range(16))  # every beta, each once
    assert len(list((out / "images").glob("*.png"))) == 16  # reconstructions pending at the kill were done


def test_bad_messages_are_rejected_and_the_decoder_goes_on(tmp_path, model_folder, rng, caplog):
    folder, gallery = model_folder
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), tmp_path / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(service.receiver.address)
    good = encode(_beta(3, 0, rng))
    wrong_version = [good[0], good[1].replace(b'"v": 1', b'"v": 99').replace(b'"v":1', b'"v":99'), *good[2:]]
    oversized = [good[0], b"{" + b" " * (70 * 1024) + b"}"]
    try:
        for frames in ([b"junk"], wrong_version, oversized, [b"beta", b"not json", b"x"]):
            raw.send_multipart(frames)
        for _ in range(8):
            service.step(timeout_ms=100)
        raw.send_multipart(good)
        for _ in range(20):
            service.step(timeout_ms=100)
            if service.decoded_here:
                break
    finally:
        raw.close(linger=0)
        service.close()
    assert service.receiver.rejected == 4
    assert service.decoded_here == 1
    assert "rejected message" in caplog.text


@pytest.mark.slow
def test_scanner_side_to_decoder_to_two_subscribers(tmp_path, small_visit):
    """The whole real-time path: files -> scanner side -> GLM -> acknowledged betas -> decoder -> displays."""
    import nibabel as nib

    from rtdecode.simulator.scanner import write_run

    from conftest import SideThread, make_config

    run = small_visit.run(0)
    run.save_truth(tmp_path / "truth", "series-005")
    roi = np.zeros(run.shape, np.uint8)
    roi.ravel()[run.roi_index] = 1
    nib.save(nib.Nifti1Image(roi, run.affine), tmp_path / "roi.nii")
    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [len(run.roi_index)], hidden=32)),
                                tmp_path / "model", "sim01")
    small_visit.save_stimuli(tmp_path / "gallery")
    service = DecoderService(Decoder.from_folder(folder, tmp_path / "gallery"), tmp_path / "decoded",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    subs = [Subscriber(service.publisher.address, topics=("result",)) for _ in range(2)]
    decoder = threading.Thread(target=service.run, daemon=True)
    decoder.start()
    cfg = make_config(tmp_path, scanner={"volumes_per_run": 192}, preprocess={"mask": str(tmp_path / "roi.nii")},
                      glm={"events": str(tmp_path / "truth" / "series-{series:03d}_events.tsv")},
                      network={"decoder": service.receiver.address, "resend_s": 1.0, "drain_s": 90.0})
    got: list[list] = [[], []]
    try:
        with SideThread(cfg, n=192, timeout=200) as st:
            write_run(run, cfg.scanner.watch_dir, series=5, speedup=150)
            st.wait()
        _collect(subs, got, lambda got: min(len(g) for g in got) >= 4 * 63, 60, 20)
    finally:
        service.stop()
        decoder.join(timeout=10)
        for sub in subs:
            sub.close()
    from gui.replay import decoder_messages, session_messages

    replayed = session_messages(st.side.folder.path)
    assert sum(m.type == "volume" for m in replayed) == 192 and sum(m.type == "beta" for m in replayed) == 63
    decoded = decoder_messages(tmp_path / "decoded")
    assert sum(m.fields["stage"] == "reconstruction" for m in decoded) == 126
    acked = (st.side.folder.derivatives / "betas_acked.keys").read_text().split()
    assert len(acked) == 126  # 63 real-time and 63 end-of-run betas, each acknowledged
    for g in got:
        retrievals = {(m.fields["trial"], m.fields["version"]) for m in g if m.fields["stage"] == "retrieval"}
        assert retrievals == {(t, v) for t in range(63) for v in ("realtime", "endofrun")}
        assert sum(m.fields["stage"] == "reconstruction" for m in g) == 126


def test_decoder_reconstructs_with_unclip_or_else_the_blurry_image(tmp_path, rng):
    from test_unclip import TINY, TINY_VAE

    from models.blurry import blurry_image, build_sd_vae
    from models.unclip.convert import to_sgm_unet, to_sgm_vae
    from models.unclip.pipeline import UnclipSettings, build_modules, convert_unclip, load_converted

    torch.manual_seed(1)
    unet, vae = build_modules(TINY, TINY_VAE, device="cpu")
    torch.save({"state_dict": {**to_sgm_unet(unet.state_dict(), TINY), **to_sgm_vae(vae.state_dict())}},
               tmp_path / "unclip.ckpt")
    rec = load_converted(convert_unclip(tmp_path / "unclip.ckpt", tmp_path / "unclip", TINY, TINY_VAE), TINY_VAE)
    rec.settings = UnclipSettings(steps=4, size=64)
    config = MindEye2Config(subjects=["s"], voxels=[N_VOXELS], hidden=32, n_blocks=2, clip_tokens=5,
                            clip_dim=24, blurry=True, blurry_channels=(32, 32, 64), prior_depth=1, prior_dim_head=8)
    model = MindEye2(config).eval()
    gallery = rng.normal(size=(7, 5, 24)).astype(np.float32)
    ids = [f"g{i}" for i in range(7)]
    with_unclip = Decoder(model, "s", None, ids, gallery,
                          reconstruct=lambda t: rec(torch.as_tensor(t)[None])[0].permute(1, 2, 0).numpy())
    beta = rng.normal(size=N_VOXELS).astype(np.float32)
    ret = with_unclip.retrieve(beta)
    assert ret.tokens.shape == (5, 24) and len(ret.ids) == 5 and ret.blurry_latent.shape == (4, 28, 28)
    image, _ = with_unclip.reconstruct(ret.tokens, ret.blurry_latent)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    sd = build_sd_vae((32, 32, 64, 64), device="cpu").eval()
    blurry_only = Decoder(model, "s", None, ids, gallery,
                          blurry=lambda z: blurry_image(sd, torch.as_tensor(z)[None])[0].permute(1, 2, 0).numpy())
    image, _ = blurry_only.reconstruct(ret.tokens, ret.blurry_latent)
    assert image.shape == (224, 224, 3)
    assert blurry_only.can_reconstruct and blurry_only.reconstruct(ret.tokens, None)[0] is None


def test_decode_command_with_a_missing_model_folder_gives_one_line(tmp_path, capsys):
    from rtdecode.cli import main

    (tmp_path / "gallery").mkdir()
    assert main(["decode", "--model", str(tmp_path / "absent"), "--gallery", str(tmp_path / "gallery"),
                 "--out", str(tmp_path / "out"), "--betas", "tcp://127.0.0.1:0", "--results", "tcp://127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtdecode: error: rtdecode decode:") and "absent" in err[0]
