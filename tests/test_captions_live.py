"""Captions and refinement, live: the wire field, the decoder's store, the refine policy on real sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from models.standin import StandInEmbedder
from rtdecode.base.errors import ProtocolError
from rtdecode.decoder.core import Decoder, clean_caption
from rtdecode.decoder.results import ResultStore
from rtdecode.decoder.service import DecoderService
from rtdecode.gallery.builtin import StimulusSet, image_id
from rtdecode.gallery.captions import StandinCaptioner, fit_captioner, painted_caption
from rtdecode.wire.reliable import BetaSender, beta_message
from rtdecode.wire.schema import check_fields
from rtdecode.wire.sockets import Subscriber

from conftest import wait_until

N_VOXELS = 37
SESSION = {"subject": "01", "session": "01", "session_uid": "c" * 32}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny stand-in model, a gallery of built-in test-pool images, and a stand-in captioner trained on
    training-pool images only."""
    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)),
                               tmp_path_factory.mktemp("model"), "sim01")
    gallery = tmp_path_factory.mktemp("gallery")
    StimulusSet().save(gallery, range(1000, 1012))
    train = list(range(0, 120))
    tokens = StandInEmbedder().embed(StimulusSet().images(train))
    captioner = fit_captioner([image_id(i) for i in train], tokens).save(tmp_path_factory.mktemp("captioner"))
    return model, gallery, captioner


class TinyRefiner:
    """A real, small refiner with the Refiner's call: it shifts the image toward a colour drawn from the
    generator (so a refined picture differs from the first) and records the order of its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def refine(self, image: np.ndarray, caption: str, blurry, generator: torch.Generator) -> np.ndarray:
        self.calls.append(caption)
        tint = torch.rand(3, generator=generator, device=generator.device).cpu().numpy() * 255
        return (0.5 * image + 0.5 * tint).astype(np.uint8)


def _service(tmp_path, folders, refine: str | None, refiner=None, captions: bool = True) -> DecoderService:
    model, gallery, captioner = folders
    decoder = Decoder.from_folder(model, gallery, cache=tmp_path / "cache", captioner=captioner if captions else None)
    decoder.refiner = refiner
    return DecoderService(decoder, tmp_path / "out", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", heartbeat_s=60,
                          refine=refine)


def _beta(trial: int, rng) -> object:
    return beta_message(1, trial, rng.normal(size=N_VOXELS), SESSION, image=image_id(1000 + trial % 12))


def _send_two(tmp_path: Path, service: DecoderService, rng: np.random.Generator,
              done: Callable[[BetaSender], bool]) -> None:
    """Trials 0 and 1's betas (from the seeded ``rng``) sent to ``service``, stepped until ``done(sender)``; both closed."""
    sender = BetaSender(service.receiver.address, tmp_path / "acked.keys", resend_s=1.0)
    try:
        for trial in range(2):
            sender.send(_beta(trial, rng))

        def stepped() -> bool:
            service.step(timeout_ms=20)
            sender.pump()
            return done(sender)

        assert wait_until(stepped, 60)
    finally:
        service.close()
        sender.close()


def test_caption_field_is_validated_whole():
    base = {"run": 1, "trial": 0}
    check_fields("result", {**base, "caption": "a red house under a grey sky"})
    check_fields("result", {**base, "caption": "x" * 300})
    for bad in ("a house\n", "a\tb", "x" * 301, "lone \ud800 surrogate", "line\u2028separator", 7, "bell\x07"):
        with pytest.raises(ProtocolError, match="result.caption"):
            check_fields("result", {**base, "caption": bad})


def test_clean_caption_always_passes_the_schema(rng):
    alphabet = ["a", " ", "\n", "\t", "\x00", "\u2028", "\ud800", "é", "\x9f", "漢"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 400))))
        check_fields("result", {"run": 1, "trial": 0, "caption": clean_caption(text)})
    assert clean_caption("  a\nred\thouse  ") == "a red house"


def test_captions_on_the_wire_in_the_store_and_after_a_restart(tmp_path, folders, rng):
    service = _service(tmp_path, folders, refine=None)
    assert service.refine == "off"  # no refiner loaded: off by default
    sub = Subscriber(service.publisher.address, topics=("result",))
    sender = BetaSender(service.receiver.address, tmp_path / "acked.keys", resend_s=1.0)
    try:
        time.sleep(0.3)  # the subscription reaches the publisher
        for trial in range(3):
            sender.send(_beta(trial, rng))
        got = []

        def step() -> bool:
            service.step(timeout_ms=20)
            sender.pump()
            msg = sub.recv(0)
            if msg is not None:
                got.append(msg)
            return sum(m.fields["stage"] == "reconstruction" for m in got) >= 3

        assert wait_until(step, 60)
    finally:
        service.close()
        sender.close()
        sub.close()
    # The caption goes out after its trial's retrieval (never delaying it), then on the trial's picture.
    for trial in range(3):
        stages = [(m.fields["stage"], m.fields.get("caption")) for m in got if m.fields["trial"] == trial]
        first = [s for s, _ in stages]
        assert first.index("retrieval") < first.index("caption") < first.index("reconstruction"), stages
        said = {c for s, c in stages if s in ("caption", "reconstruction")}
        assert len(said) == 1 and all(said) and stages[first.index("retrieval")][1] is None
    caps = [m.fields["caption"] for m in got if m.fields["stage"] == "caption"]
    stored = ResultStore(tmp_path / "out" / "sub-01" / "ses-01", readonly=True).captions()
    assert sorted(stored.values()) == sorted(caps) and len(caps) == 3
    # Restarted: the replay a late console gets holds every trial's caption on its retrieval (captions.tsv).
    again = _service(tmp_path, folders, refine=None)
    late = Subscriber(again.publisher.address, topics=("result",))
    replayed = []

    def joined() -> bool:
        again.step(timeout_ms=20)
        while (msg := late.recv(0)) is not None:
            replayed.append(msg)
        return len({m.fields["trial"] for m in replayed if m.fields["stage"] == "retrieval"}) >= 3

    try:
        assert wait_until(joined, 30)
    finally:
        again.close()
        late.close()
    again_caps = {m.fields["trial"]: m.fields["caption"] for m in replayed if m.fields["stage"] == "retrieval"}
    assert sorted(again_caps.values()) == sorted(stored.values())
    assert all(m.fields.get("caption") for m in replayed if m.fields["stage"] == "reconstruction")


def _burst(tmp_path, folders, rng, refine: str) -> tuple[list, TinyRefiner]:
    """A warm-up beta (decoded and refined), then a burst of 6; the results in the order published."""
    refiner = TinyRefiner()
    service = _service(tmp_path, folders, refine=refine, refiner=refiner)
    sub = Subscriber(service.publisher.address, topics=("result",))
    sender = BetaSender(service.receiver.address, tmp_path / "acked.keys", resend_s=5.0)
    got = []

    def step(done) -> bool:
        service.step(timeout_ms=20)
        sender.pump()
        while (msg := sub.recv(0)) is not None:
            got.append(msg)
        return done()

    try:
        time.sleep(0.3)  # the subscription reaches the publisher
        sender.send(_beta(0, rng))
        assert wait_until(lambda: step(lambda: service.refined_here == 1), 60)
        for trial in range(1, 7):
            sender.send(_beta(trial, rng))
        time.sleep(0.3)  # the burst reaches the decoder's socket before it takes the next step
        assert wait_until(lambda: step(lambda: service.refined_here == 7 and sum(
            m.fields["stage"] == "refined" for m in got) == 7), 120)
    finally:
        service.close()
        sender.close()
        sub.close()
    return [m for m in got if m.fields["trial"] >= 1], refiner


def test_idle_refinement_never_comes_before_a_first_reconstruction(tmp_path, folders, rng):
    burst, refiner = _burst(tmp_path, folders, rng, "idle")
    stages = [m.fields["stage"] for m in burst]
    last_first = max(i for i, s in enumerate(stages) if s == "reconstruction")
    first_refined = min(i for i, s in enumerate(stages) if s == "refined")
    assert last_first < first_refined, stages  # every trial's first picture before any refinement
    refined = [m for m in burst if m.fields["stage"] == "refined"]
    assert sorted(m.fields["trial"] for m in refined) == list(range(1, 7))
    assert all(m.fields["caption"] for m in refined) and len(refiner.calls) == 7
    out = tmp_path / "out" / "sub-01" / "ses-01" / "images"
    assert len(list(out.glob("*_refined.png"))) == 7 and len(list(out.glob("*_realtime.png"))) == 7


def test_always_refines_before_the_next_reconstruction(tmp_path, folders, rng):
    """The contrast: 'always' delays later trials' first pictures, as documented."""
    burst, _ = _burst(tmp_path, folders, rng, "always")
    stages = [m.fields["stage"] for m in burst]
    assert stages.index("refined") < max(i for i, s in enumerate(stages) if s == "reconstruction")


def test_refine_without_a_refiner_is_one_clear_error(tmp_path, folders):
    with pytest.raises(ValueError, match="--refine idle needs a refiner"):
        _service(tmp_path, folders, refine="idle")


def test_stored_captions_pass_through_an_older_table(tmp_path, folders, rng):
    """A results.tsv begun with other columns (a caption column, as rtdecode wrote for a day) keeps its header,
    every row as wide as it; the caption comes from captions.tsv."""
    folder = tmp_path / "out" / "sub-01" / "ses-01"
    store = ResultStore(folder, SESSION)
    old = ("key\trun\ttrial\tversion\timage\ttop_ids\ttop_scores\tbackbone_ms\tretrieval_ms\tprior_ms\tt_received\tt_done"
           "\tcaption\n")
    store.table.write_text(old)
    store = ResultStore(folder, SESSION)
    tokens = np.zeros((16, 64), np.float32)
    key = f"{'c' * 32}:1:0:realtime"
    store.save_retrieval(key, {"run": 1, "trial": 0, "image": "sim-01000"}, tokens, ["sim-01000"],
                         [0.5], {"backbone_ms": 1, "retrieval_ms": 1, "prior_ms": 1}, time.time())
    store.save_caption(key, "a house")
    lines = store.table.read_text().splitlines()
    assert lines[0] == old.strip()
    assert {len(line.split("\t")) for line in lines} == {13}  # every row as wide as its header (pandas reads it)
    assert [m.fields.get("caption") for m in store.retrieval_messages()] == ["a house"]


def test_painted_captions_name_what_was_painted():
    assert painted_caption("sim-00009").startswith("a sandy desert with two cacti")
    assert painted_caption("sim-00004").startswith("a white flower")
    with pytest.raises(ValueError, match="sim-"):
        painted_caption("cat-001")


def test_the_captioner_is_never_trained_on_test_images():
    tokens = np.zeros((2, 16, 64), np.float32)
    with pytest.raises(ValueError, match="test-pool"):
        fit_captioner(["sim-00001", "sim-01000"], tokens)


def test_captioner_round_trip_and_strict_load(tmp_path, folders):
    _, _, folder = folders
    loaded = StandinCaptioner.from_folder(folder)
    tokens = StandInEmbedder().embed(StimulusSet().images(range(1000, 1040)))
    assert loaded.caption(tokens) == StandinCaptioner.from_folder(folder).caption(torch.from_numpy(tokens))
    # Better than chance at the scene kind on test images it never saw (10 kinds: chance 10%).
    kinds = [c.split(" ")[1:3] for c in loaded.caption(tokens)]
    truth = [painted_caption(image_id(i)).split(" ")[1:3] for i in range(1000, 1040)]
    assert np.mean([a == b for a, b in zip(kinds, truth, strict=True)]) > 0.5
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(folder / "standin_captioner.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "standin_captioner.json").write_text((folder / "standin_captioner.json").read_text())
    save_file({**arrays, "weights": arrays["weights"][:, :-1].copy()}, str(bad / "standin_captioner.safetensors"))
    with pytest.raises(ValueError, match="expected"):
        StandinCaptioner.from_folder(bad)


def test_rtdecode_decode_with_tiny_git_and_tiny_sdxl(tmp_path, folders, rng):
    """A real decoder process with B1's tiny GIT (fed the stand-in's 16 x 64 tokens through the converter)
    and tiny SDXL, both in the published layouts: each trial's caption, then its refined picture."""
    import json
    import subprocess
    import sys

    from models.caption.tiny import write_tiny_captioner
    from models.refine.tiny import write_tiny_refiner

    model, gallery, _ = folders
    git = write_tiny_captioner(tmp_path / "git", tokens_in=16, dim_in=64)
    sdxl = write_tiny_refiner(tmp_path / "sdxl", size=32)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rtdecode.cli", "decode", "--model", str(model), "--gallery",
                             str(gallery), "--out", str(out), "--betas", "tcp://127.0.0.1:0", "--results",
                             "tcp://127.0.0.1:0", "--captioner", str(git), "--refiner", str(sdxl)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sender = sub = None
    try:
        assert wait_until(lambda: (out / "decoder.json").exists() or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        addresses = json.loads((out / "decoder.json").read_text())
        sub = Subscriber(addresses["results"], topics=("result",))
        sender = BetaSender(addresses["betas"], tmp_path / "acked.keys", resend_s=2.0)
        time.sleep(0.3)  # the subscription reaches the publisher
        for trial in range(2):
            sender.send(_beta(trial, rng))
        got = []

        def refined_both() -> bool:
            sender.pump()
            while (msg := sub.recv(20)) is not None:
                got.append(msg)
            return len({m.fields["trial"] for m in got if m.fields["stage"] == "refined"}) == 2

        assert wait_until(refined_both, 180)
    finally:
        proc.terminate()
        proc.wait(30)
        for s in (sender, sub):
            if s is not None:
                s.close()
    captions = {m.fields["trial"]: m.fields.get("caption") for m in got if m.fields["stage"] == "caption"}
    refined = {m.fields["trial"]: m.fields.get("caption") for m in got if m.fields["stage"] == "refined"}
    assert set(captions) == {0, 1} and refined == captions  # refined with the trial's own caption
    assert all(isinstance(c, str) and c for c in captions.values())
    assert len(list((out / "sub-01" / "ses-01" / "images").glob("*_refined.png"))) == 2


def test_trials_decoded_without_a_caption_are_captioned_after_a_restart(tmp_path, folders, rng):
    """Decoded by a decoder without a captioner (or killed before captioning): the next one captions them."""
    first = _service(tmp_path, folders, refine=None, captions=False)
    _send_two(tmp_path, first, rng, lambda sender: first.decoded_count() == 2 and not sender.outbox)
    store = ResultStore(tmp_path / "out" / "sub-01" / "ses-01", readonly=True)
    assert set(store.captions().values()) == {""}
    again = _service(tmp_path, folders, refine=None)
    assert len(again.caption_queue) == 2
    try:
        assert wait_until(lambda: (again.step(timeout_ms=20), not again.caption_queue and not again.queue)[1], 60)
    finally:
        again.close()
    assert all(store.captions().values()) and len(store.captions()) == 2


class FailingRefiner:
    def refine(self, image, caption, blurry, generator):
        raise RuntimeError("CUDA out of memory (simulated by a refiner that always fails)")


def test_a_failing_refiner_leaves_the_first_pictures_and_the_loop_going(tmp_path, folders, rng, caplog):
    service = _service(tmp_path, folders, refine="idle", refiner=FailingRefiner())

    def done(sender: BetaSender) -> bool:
        images = tmp_path / "out" / "sub-01" / "ses-01" / "images"
        return len(list(images.glob("*.png"))) == 2 and not service.refine_queue and not sender.outbox

    _send_two(tmp_path, service, rng, done)
    assert service.refined_here == 0 and "refinement of" in caplog.text and "out of memory" in caplog.text
