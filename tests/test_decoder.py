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
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.wire.protocol import Message, decode_png, encode
from rtdecode.wire.reliable import BetaSender, beta_message
from rtdecode.wire.sockets import Subscriber

from conftest import free_port

N_VOXELS = 53
SESSION_A = {"subject": "01", "session": "01", "session_uid": "a" * 32}
SESSION_B = {"subject": "02", "session": "01", "session_uid": "b" * 32}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny calibrated-model folder in the stand-in token space (16 tokens x 64)."""
    torch.manual_seed(0)
    folder = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                                tmp_path_factory.mktemp("model"), "sim01")
    gallery = tmp_path_factory.mktemp("gallery")
    StimulusSet().save(gallery, range(12))
    return folder, gallery


def _beta(run: int, trial: int, rng, session: dict = SESSION_A) -> Message:
    return beta_message(run, trial, rng.normal(size=N_VOXELS), session, image=f"sim-{trial:05d}")


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
    assert len((tmp_path / "out" / "sub-01" / "ses-01" / "results.tsv").read_text().splitlines()) == 6


def test_decoder_killed_mid_run_decodes_every_beta_exactly_once(tmp_path, model_folder, rng):
    folder, gallery = model_folder
    port = free_port()  # the sender connects before the decoder binds, and again while it is dead
    cmd = [sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(folder), "--gallery", str(gallery),
           "--out", str(tmp_path / "out"), "--betas", f"tcp://127.0.0.1:{port}", "--results", "tcp://127.0.0.1:0"]
    env = {**os.environ, "RTDECODE_CACHE": str(tmp_path / "cache")}
    sender = BetaSender(f"tcp://127.0.0.1:{port}", tmp_path / "acked.keys", resend_s=0.5)
    out = tmp_path / "out" / "sub-01" / "ses-01"
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
    assert sorted(keys) == sorted(f"{'a' * 32}:2:{t}:realtime" for t in range(16))  # every beta, each once
    assert len(list((out / "images").glob("*.png"))) == 16  # reconstructions pending at the kill were done


def _tampered(frames: list[bytes], **changes) -> list[bytes]:
    import json

    header = json.loads(frames[1])
    header.update(changes)
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


def test_bad_messages_are_rejected_and_the_decoder_goes_on(tmp_path, model_folder, rng, caplog):
    """Malformed betas (wrong types, path characters, NaN, wrong version, oversized) never stop the decoder.

    On the round-1 main, run="abc" or version="x/../../y" raised out of step() and ended the process."""
    folder, gallery = model_folder
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), tmp_path / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", max_bytes=256 * 1024)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(service.receiver.address)
    good = encode(_beta(3, 0, rng))
    bad = [
        [b"junk"],
        _tampered(good, v=1),
        [good[0], b"{" + b" " * (70 * 1024) + b"}"],
        [b"beta", b"not json", b"x"],
        _tampered(good, run="abc"),
        _tampered(good, version="a:b"),
        _tampered(good, version="x/../../y"),
        _tampered(good, subject="../../etc"),
        _tampered(good, trial=10**30),
        [*good[:2], np.full(N_VOXELS, np.nan, np.float32).tobytes()],
        _tampered(good, type="ack"),
    ]
    try:
        for frames in bad:
            raw.send_multipart(frames)
        raw.send_multipart([good[0], good[1], b"\0" * (300 * 1024)])  # over MAXMSGSIZE: the peer is dropped
        for _ in range(len(bad) + 4):
            service.step(timeout_ms=100)
        raw.close(linger=0)
        raw = zmq.Context.instance().socket(zmq.DEALER)  # a well-behaved peer, after the one that was cut off
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(service.receiver.address)
        raw.send_multipart(good)
        for _ in range(40):
            service.step(timeout_ms=100)
            if service.decoded_here:
                break
    finally:
        raw.close(linger=0)
        service.close()
    assert service.receiver.rejected == len(bad)
    assert service.decoded_here == 1
    assert not list((tmp_path / "out").rglob("*..*"))  # nothing named from a received string
    assert "rejected message" in caplog.text and "version" in caplog.text


def test_one_out_folder_keeps_two_participants_apart(tmp_path, model_folder, rng):
    """Participant B's betas share run and trial numbers with A's; both are decoded, each into its own folder.

    On the round-1 main the ledger key was run:trial:version, so B's betas were acknowledged and never decoded."""
    folder, gallery = model_folder
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), tmp_path / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    senders = [BetaSender(service.receiver.address, tmp_path / f"acked-{name}.keys", resend_s=0.5) for name in "ab"]
    try:
        for sender, session in zip(senders, (SESSION_A, SESSION_B), strict=True):
            for trial in range(3):
                sender.send(_beta(1, trial, rng, session))
        for sender in senders:
            _pump_until(sender, lambda s=sender: not s.outbox, 30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list((tmp_path / "out").rglob("images/*.png"))) < 6:
            time.sleep(0.1)
    finally:
        service.stop()
        thread.join(timeout=10)
        for sender in senders:
            sender.close()
    for session in (SESSION_A, SESSION_B):
        out = tmp_path / "out" / f"sub-{session['subject']}" / f"ses-{session['session']}"
        rows = (out / "results.tsv").read_text().splitlines()[1:]
        assert sorted(r.split("\t")[0] for r in rows) == [f"{session['session_uid']}:1:{t}:realtime" for t in range(3)]
        assert len(list((out / "images").glob("*.png"))) == 3


def test_a_folder_of_another_session_is_refused_in_one_line_and_nothing_is_lost(tmp_path, model_folder, rng, caplog):
    """Same subject and session labels, another session uid: not decoded, not acknowledged, said once."""
    folder, gallery = model_folder
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), tmp_path / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    first = BetaSender(service.receiver.address, tmp_path / "first.keys", resend_s=0.3)
    other = {**SESSION_A, "session_uid": "c" * 32}
    second = BetaSender(service.receiver.address, tmp_path / "second.keys", resend_s=0.3)
    try:
        first.send(_beta(1, 0, rng))
        _pump_until(first, lambda: not first.outbox, 30)
        second.send(_beta(1, 0, rng, other))
        _pump_until(second, lambda: False, 2.0)  # resent a few times; never acknowledged
    finally:
        service.stop()
        thread.join(timeout=10)
        first.close()
        second.close()
    assert second.outbox and not second.acked.keys  # kept by the sender, for a decoder with another --out
    lines = [r.getMessage() for r in caplog.records if "holds session uid" in r.getMessage()]
    assert len(lines) == 1 and "c" * 32 in lines[0] and "a" * 32 in lines[0]
    out = tmp_path / "out" / "sub-01" / "ses-01"
    assert len((out / "results.tsv").read_text().splitlines()) == 2  # A's one row, untouched
    assert service.refused >= 1


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
    from rtdecode.tools.replay import decoder_messages, session_messages

    replayed = session_messages(st.side.folder.path)
    assert sum(m.type == "volume" for m in replayed) == 192
    assert sum(m.type == "trial" and m.fields["version"] == "realtime" for m in replayed) == 63
    decoded = decoder_messages(tmp_path / "decoded")
    assert sum(m.fields["stage"] == "reconstruction" for m in decoded) == 126
    # One --out for the whole day: a second participant's folder beside it, and the replay still finds
    # this session's own results (before, "expected one decoded session ... found sub-01/ses-01, sub-02/ses-01").
    from rtdecode.decoder.results import ResultStore
    from rtdecode.tools.replay import replayed as replay_pairs

    ResultStore(tmp_path / "decoded" / "sub-02" / "ses-01", {"subject": "02", "session": "01", "session_uid": "e" * 32})
    pairs = replay_pairs(st.side.folder.path, tmp_path / "decoded")
    assert sum(src == "decoder" and m.fields.get("stage") == "reconstruction" for src, m in pairs) == 126
    acked = (st.side.folder.derivatives / "betas_acked.keys").read_text().split()
    assert len(acked) == 126  # 63 real-time and 63 end-of-run betas, each acknowledged
    for g in got:
        retrievals = {(m.fields["trial"], m.fields["version"]) for m in g if m.fields["stage"] == "retrieval"}
        assert retrievals == {(t, v) for t in range(63) for v in ("realtime", "endofrun")}
        assert sum(m.fields["stage"] == "reconstruction" for m in g) == 126


def test_decoder_reconstructs_with_unclip_or_else_the_blurry_image(tmp_path, rng):
    from test_unclip import TINY, TINY_VAE

    from models.blurry import build_sd_vae
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
    with_unclip = Decoder(model, "s", None, ids, gallery, unclip=rec)
    beta = rng.normal(size=N_VOXELS).astype(np.float32)
    ret = with_unclip.retrieve(beta)
    assert ret.tokens.shape == (5, 24) and len(ret.ids) == 5 and ret.blurry_latent.shape == (4, 28, 28)
    image, _ = with_unclip.reconstruct(ret.tokens, ret.blurry_latent)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    sd = build_sd_vae((32, 32, 64, 64), device="cpu").eval()
    blurry_only = Decoder(model, "s", None, ids, gallery, vae=sd)
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


# (write-path point, which passage of it in one decoder process); each is a real SIGKILL. Retrieval-side
# points first: a process reconstructs only once no beta waits, so a later retrieval-side kill would
# find nothing left to kill.
CRASH_PLAN = [
    ("retrieved", 1), ("tokens", 1), ("committed", 1), ("acked", 1), ("tokens", 2), ("retrieved", 2),
    ("committed", 2), ("acked", 2), ("tokens", 3), ("retrieved", 1), ("committed", 1), ("tokens", 4),
    ("acked", 1), ("tokens", 1),
    ("reconstructed", 1), ("image_saved", 1), ("reconstructed", 2), ("image_saved", 2), ("reconstructed", 1),
    ("image_saved", 1), ("reconstructed", 3), ("image_saved", 2),
]


@pytest.mark.slow
@pytest.mark.long  # about a minute: 23 decoder processes; make long, which CI runs after make test
def test_exactly_once_with_a_sigkill_anywhere_on_the_write_path(tmp_path, model_folder):
    """22 SIGKILLs spread over the decoder's write path; the results folder then equals a never-killed run's.

    On the round-1 main, a kill at 'committed' (the row written, its key not yet in decoded.keys, which
    was not fsynced) decoded the beta again on restart and wrote a second row."""
    from decoder_process import context, serve

    folder, gallery = model_folder
    ctx = context()
    n = 20
    betas = [_beta(4, t, np.random.default_rng(100 + t)) for t in range(n)]

    def decode_all(out, crashes) -> int:
        address = f"tcp://127.0.0.1:{free_port()}"
        sender = BetaSender(address, out.parent / f"{out.name}-acked.keys", resend_s=0.3)
        kills = 0
        try:
            for beta in betas:
                sender.send(beta)
            for crash in [*crashes, ""]:  # "" : a last process with no crash point finishes the work
                proc = ctx.Process(target=serve, args=(str(folder), str(gallery), str(out), address, crash, n,
                                                       str(tmp_path / "cache")))
                proc.start()
                deadline = time.monotonic() + 60
                while proc.is_alive() and time.monotonic() < deadline:
                    sender.pump(timeout_ms=20)
                proc.join(timeout=5)
                assert proc.exitcode is not None, f"decoder with crash point {crash!r} did not end"
                kills += proc.exitcode == -signal.SIGKILL
            _pump_until(sender, lambda: not sender.outbox, 10)
            assert not sender.outbox
        finally:
            sender.close()
        return kills

    reference, killed = tmp_path / "never-killed", tmp_path / "killed"
    assert decode_all(reference, []) == 0
    kills = decode_all(killed, [f"{p}:{k}" for p, k in CRASH_PLAN])
    assert kills >= 20, f"only {kills} of {len(CRASH_PLAN)} crash points were reached"

    def folder_of(out):
        return out / "sub-01" / "ses-01"

    def rows(out):
        lines = (folder_of(out) / "results.tsv").read_text().splitlines()
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]

    ref_rows, got_rows = rows(reference), rows(killed)
    keys = [r["key"] for r in got_rows]
    assert len(keys) == len(set(keys)) == n  # every beta once: none lost, none twice
    assert {r["key"]: r["top_ids"] for r in got_rows} == {r["key"]: r["top_ids"] for r in ref_rows}
    for name in ("tokens", "images"):
        ref_files = sorted(p.name for p in (folder_of(reference) / name).iterdir() if not p.name.startswith("."))
        got_files = sorted(p.name for p in (folder_of(killed) / name).iterdir() if not p.name.startswith("."))
        assert got_files == ref_files and len(ref_files) == (2 * n if name == "tokens" else n)
    for key in keys:  # retrieval tokens are a pure function of the beta: equal to the last bit
        stem_ = key.split(":", 1)[1].replace(":", "_")
        run, trial, version = stem_.split("_")
        name = f"run-{int(run):02d}_trial-{int(trial):03d}_{version}_clip.npy"
        np.testing.assert_array_equal(np.load(folder_of(killed) / "tokens" / name),
                                      np.load(folder_of(reference) / "tokens" / name))


def test_refine_policy_reconstructs_only_the_newest_version_of_a_trial(tmp_path, model_folder, rng):
    """Refinements of trial 0 (rt4.5, rt6.0, rt7.5) arrive before the decoder is free to draw: only rt7.5
    is drawn, the two superseded ones are recorded as skipped (a restart does not draw them), and an older
    version arriving late does not displace a newer one waiting; trial 1's only version is drawn."""
    folder, gallery = model_folder
    out = tmp_path / "out"
    service = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), out,
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", policy="refine")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(service.receiver.address)
    # Trial 1's rt4.5 comes after its rt5.0 (a slow path): dropped on arrival, rt5.0 keeps its place.
    sent = [(0, "rt4.5"), (0, "rt6.0"), (1, "rt5.0"), (0, "rt7.5"), (1, "rt4.5"), (1, "rt4.5")]
    try:
        for trial, version in sent[:-1]:
            raw.send_multipart(encode(beta_message(2, trial, rng.normal(size=N_VOXELS), SESSION_A,
                                                   image=f"sim-{trial:05d}", version=version)))
        for _ in range(100):  # every beta in before the queue is looked at (a message always comes first)
            service.step(timeout_ms=100)
            if service.decoded_here == len(sent) - 1:
                break
        assert len(service.queue) == 2
        # (1, rt4.5) again: already decoded, so acknowledged and not queued at all.
        raw.send_multipart(encode(beta_message(2, 1, rng.normal(size=N_VOXELS), SESSION_A, image="sim-00001",
                                               version="rt4.5")))
        for _ in range(100):
            service.step(timeout_ms=50)
            if not service.queue:
                break
    finally:
        raw.close(linger=0)
        service.close()
    images = sorted(p.name for p in out.rglob("images/*.png"))
    assert images == ["run-02_trial-000_rt7.5.png", "run-02_trial-001_rt5.0.png"]
    assert service.superseded == 3
    again = DecoderService(Decoder.from_folder(folder, gallery, cache=tmp_path / "cache"), out,
                           "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", policy="refine")
    try:
        assert not again.queue
    finally:
        again.close()
