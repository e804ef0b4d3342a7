"""``rtdecode evaluate`` on a recorded session decoded by the real decoder service over ZeroMQ."""

from __future__ import annotations

import csv
import shutil
import threading
import time

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from models import registry
from models.features import SPECS, prepare
from models.folder import write_model_folder
from models.mindeye2.config import standin_config
from models.mindeye2.model import MindEye2
from models.retrieval import similarity
from rtdecode.base.session import SessionFolder, append_tsv
from rtdecode.cli import main
from rtdecode.decoder.core import Decoder
from rtdecode.decoder.results import ResultStore
from rtdecode.decoder.service import DecoderService
from rtdecode.evaluate import metrics
from rtdecode.gallery.builtin import StimulusSet
from rtdecode.glm.store import BETA_COLUMNS
from rtdecode.wire.reliable import BetaSender, beta_message

N_VOXELS = 41
TRIALS = 6  # per run
SHOWN = {1: [0, 1, 2, 3, 4, 5], 2: [3, 4, 5, 6, 7, 8]}  # sim-00003..05 shown in both runs: 9 images, 3 repeated


def _image(run: int, trial: int) -> str:
    return f"sim-{SHOWN[run][trial % TRIALS]:05d}"


def _record(root, subject="01") -> SessionFolder:
    """A session folder as the scanner side leaves it: betas tables of two runs, real-time and end of run."""
    folder = SessionFolder(root, subject, "01").create()
    for run in (1, 2):
        for version in ("realtime", "endofrun"):
            table = folder.derivatives / f"{folder.prefix(run)}_desc-{version}_betas.tsv"
            n = TRIALS + (1 if (run, version) == (2, "realtime") else 0)  # one more: never decoded
            for trial in range(n):
                append_tsv(table, BETA_COLUMNS, {"trial": trial, "image": _image(run, trial),
                                                 "onset": 3.0 * trial, "version": version})
    return folder


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """The session decoded by the real service: betas sent over ZeroMQ, results and reconstructions on disk."""
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = write_model_folder(MindEye2(standin_config(["sim01"], [N_VOXELS], hidden=32)), tmp / "model", "sim01")
    gallery = tmp / "gallery"
    StimulusSet().save(gallery, range(2 * TRIALS))
    folder = _record(tmp / "sessions")
    service = DecoderService(Decoder.from_folder(model, gallery, cache=tmp / "cache"), tmp / "out",
                             "tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    sender = BetaSender(service.receiver.address, tmp / "acked.keys", resend_s=1.0)
    rng = np.random.default_rng(0)
    out = tmp / "out" / "sub-01" / "ses-01"
    try:
        for run in (1, 2):
            for version in ("realtime", "endofrun"):
                for trial in range(TRIALS):
                    sender.send(beta_message(run, trial, rng.normal(size=N_VOXELS), folder.identity,
                                             image=_image(run, trial), version=version))
        deadline = time.monotonic() + 240  # a bound, not a timing: the shared machine may be busy
        while time.monotonic() < deadline and len(list((out / "images").glob("*.png"))) < 4 * TRIALS:
            sender.pump(timeout_ms=50)
    finally:
        service.stop()
        thread.join(timeout=10)
        sender.close()
    assert len(list((out / "images").glob("*.png"))) == 4 * TRIALS
    # A reconstruction of another shape (a different reconstructor's output): noted, still scored.
    odd = ResultStore(out).image_path(f"{folder.identity['session_uid']}:1:2:endofrun")
    Image.open(odd).convert("RGB").resize((96, 64)).save(odd)
    weights = tmp / "weights"
    weights.mkdir()
    torch.save(tvm.alexnet().state_dict(), registry.local_path("alexnet", weights))  # only AlexNet is here
    return folder, tmp / "out", weights, model, gallery


def _settle_batchnorm(net: torch.nn.Module, images: torch.Tensor) -> None:
    """BatchNorm statistics from a pass over ``images`` (dropout and stochastic depth off), so a random
    network's features depend on the image at ordinary magnitudes, and stably: with the initial statistics
    EfficientNet's are about 1e-13, and settled on other images they grow to 1e4 and differ with the batch."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the pass
    net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        net(images)
    net.eval()


def _csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _shown_256(indices) -> np.ndarray:
    """MindEye2's true images: the shown image brought to 256 x 256 first (float, H x W x 3)."""
    shown = torch.from_numpy(StimulusSet().images(indices)).permute(0, 3, 1, 2).float() / 255
    return metrics.to_256(shown).permute(0, 2, 3, 1).numpy()


def test_evaluate_scores_every_decoded_trial_and_says_what_it_could_not(decoded, tmp_path, capsys):
    folder, out, weights, model, gallery = decoded
    assert main(["evaluate", str(folder.path), "--decoded", str(out), "--weights", str(weights),
                 "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    summary = _csv(tmp_path / "ev" / "summary.csv")
    assert [(r["version"], r["run"], r["repeats"], r["trials"], r["images"]) for r in summary] == [
        (v, run, way, n, m) for v in ("endofrun", "realtime") for run, n, m in (("all", "12", "9"), ("1", "6", "6"),
                                                                                ("2", "6", "6"))
        for way in ("averaged", "single-trial")]
    for row in summary:
        for m in ("PixCorr", "SSIM", "AlexNet(2)", "AlexNet(5)", "image_for_brain_top1_all", "brain_for_image_top1_all"):
            assert row[m] != "", (m, row)
        for m in ("InceptionV3", "CLIP", "EffNet-B", "SwAV", "image_for_brain_top1_50"):
            assert row[m] == "", (m, row)  # no weights, or fewer than 50 images: never a stand-in figure
    text = (tmp_path / "ev" / "summary.md").read_text()
    assert "| PixCorr |" in printed
    assert "InceptionV3: not available: " in text and "inception_v3_google-0cc3c7bd.pth missing" in text
    assert "run 2 (realtime): trial(s) 6 have no decoded result" in text
    assert "96x64 pixels, not square" in text
    assert "`brain_for_image_top1_*`: for each image, which brain sample" in text
    # -- per trial: PixCorr of the files on disk, recomputed here
    trials = _csv(tmp_path / "ev" / "trials.csv")
    assert len(trials) == 24
    store = ResultStore(out / "sub-01" / "ses-01")
    uid = folder.identity["session_uid"]
    row = next(r for r in trials if (r["version"], r["run"], r["trial"]) == ("realtime", "2", "3"))
    shown = torch.from_numpy(StimulusSet().image(6)).permute(2, 0, 1).float()[None] / 255
    recon = store.image_path(f"{uid}:2:3:realtime")
    rec = torch.from_numpy(np.array(Image.open(recon).convert("RGB"))).permute(2, 0, 1).float()[None] / 255
    want = metrics.pixcorr(metrics.to_256(shown), metrics.to_256(rec))[0]
    assert float(row["PixCorr"]) == pytest.approx(want, rel=1e-6)
    # -- retrieval, recomputed from the stored tokens and the 256 px images, both directions and both ways
    realtime = sorted((r for r in trials if r["version"] == "realtime"), key=lambda r: (int(r["run"]), int(r["trial"])))
    pred = np.stack([store.clip_tokens(f"{uid}:{r['run']}:{r['trial']}:realtime") for r in realtime])
    from models.folder import load_embedder

    order = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # distinct images in order of first showing
    owner = np.array([SHOWN[int(r["run"])][int(r["trial"])] for r in realtime])
    sim = similarity(pred, load_embedder(model).embed(_shown_256(order)))  # (12 trials, 9 images)
    own = sim[np.arange(12), owner]
    assert [int(r["rank_of_image"]) for r in realtime] == list(1 + (sim > own[:, None]).sum(axis=1))
    # for its image, a trial's brain sample against the brain samples of the *other* images only
    rank_of_brain = [1 + sum(sim[k, owner[j]] > own[j] for k in range(12) if owner[k] != owner[j]) for j in range(12)]
    assert [int(r["rank_of_brain"]) for r in realtime] == rank_of_brain
    by_way = {r["repeats"]: r for r in summary if (r["version"], r["run"]) == ("realtime", "all")}
    single = by_way["single-trial"]
    assert float(single["image_for_brain_top1_all"]) == pytest.approx(np.mean(sim.argmax(1) == owner))
    assert float(single["brain_for_image_top1_all"]) == pytest.approx(np.mean(np.array(rank_of_brain) == 1))
    # MindEye2's way: the brain samples of an image averaged, one per image, a square problem
    averaged = np.stack([pred[owner == i].mean(axis=0) for i in order])
    sq = similarity(averaged, load_embedder(model).embed(_shown_256(order)))
    assert float(by_way["averaged"]["image_for_brain_top1_all"]) == pytest.approx(np.mean(sq.argmax(1) == np.arange(9)))
    assert float(by_way["averaged"]["brain_for_image_top1_all"]) == pytest.approx(np.mean(sq.argmax(0) == np.arange(9)))
    for picture in ("grid.png", "histograms.png"):
        assert Image.open(tmp_path / "ev" / picture).size[0] > 100


def test_an_oracle_scores_perfectly_everywhere_repeats_included(decoded, tmp_path):
    """The shown images as their own reconstructions (and their tokens as the brain's): 1.0 and 100 %
    everywhere, in both ways of handling repeats; no histogram crash on 1.0 against 0.9999999999999998."""
    folder, out, weights, model, _ = decoded
    nets = tmp_path / "weights"
    shutil.copytree(weights, nets)
    effnet = tvm.efficientnet_b1()
    shown = metrics.to_256(torch.from_numpy(StimulusSet().images(range(9))).permute(0, 3, 1, 2).float() / 255)
    _settle_batchnorm(effnet, prepare(shown, SPECS["EffNet-B"]))  # the shown images, as EffNet-B sees them
    torch.save(effnet.state_dict(), registry.local_path("efficientnet-b1", nets))
    assert main(["evaluate", str(folder.path), "--decoded", str(out), "--weights", str(nets), "--oracle",
                 "--out", str(tmp_path / "ev")]) == 0
    summary = _csv(tmp_path / "ev" / "summary.csv")
    assert {r["repeats"] for r in summary} == {"averaged", "single-trial"}
    for row in summary:
        for m in ("PixCorr", "SSIM", "EffNet-B"):
            assert float(row[m]) == pytest.approx(1.0 if m != "EffNet-B" else 0.0, abs=1e-6), (m, row)
        for m in ("AlexNet(2)", "AlexNet(5)", "image_for_brain_top1_all", "brain_for_image_top1_all"):
            assert float(row[m]) == 1.0, (m, row)
    trials = _csv(tmp_path / "ev" / "trials.csv")
    assert {r["rank_of_image"] for r in trials} == {r["rank_of_brain"] for r in trials} == {"1"}
    assert all(float(r["AlexNet(2)"]) == 1.0 for r in trials)
    assert "oracle: the shown images scored as their own reconstructions" in (tmp_path / "ev" / "summary.md").read_text()
    assert Image.open(tmp_path / "ev" / "histograms.png").size[0] > 100
    # never mistaken for a result: every titled output says it is an oracle check
    assert (tmp_path / "ev" / "summary.md").read_text().startswith("# Oracle check of sub-01 ses-01 (not a result)")
    assert (tmp_path / "ev" / "captions.md").read_text().startswith("# Oracle check of the caption metrics")


def test_evaluate_refuses_results_of_another_session_in_one_line(decoded, tmp_path, capsys):
    _, out, _, _, _ = decoded
    other = _record(tmp_path / "elsewhere")  # same labels, another visit: another uid
    assert main(["evaluate", str(other.path), "--decoded", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the same session" in err[0] and other.identity["session_uid"] in err[0]


def test_without_weights_the_pixel_metrics_and_retrieval_still_run(decoded, tmp_path):
    folder, out, _, _, _ = decoded
    assert main(["evaluate", str(folder.path), "--decoded", str(out), "--out", str(tmp_path / "ev")]) == 0
    row = _csv(tmp_path / "ev" / "summary.csv")[0]
    assert row["PixCorr"] and row["SSIM"] and row["image_for_brain_top1_all"] and not row["AlexNet(2)"]
    assert "AlexNet(2): not available: no weights folder given" in (tmp_path / "ev" / "summary.md").read_text()


def test_a_replayed_session_carries_each_trials_score_to_the_console(decoded):
    from rtdecode.tools.replay import decoder_messages

    folder, out, weights, _, _ = decoded
    assert main(["evaluate", str(folder.path), "--decoded", str(out), "--weights", str(weights)]) == 0  # default --out
    scores = [m for m in decoder_messages(out) if m.fields.get("stage") == "evaluation"]
    trials = _csv(out / "sub-01" / "ses-01" / "evaluation" / "trials.csv")
    assert len(scores) == len(trials) == 24 and {m.fields["metric"] for m in scores} == {"AlexNet(5)"}
    by_key = {(r["version"], int(r["run"]), int(r["trial"])): float(r["AlexNet(5)"]) for r in trials}
    assert all(m.fields["score"] == by_key[(m.fields["version"], m.fields["run"], m.fields["trial"])] for m in scores)


def test_readers_beside_a_live_decoder_change_nothing_in_its_folder(decoded, tmp_path):
    """A row the decoder is writing (no newline yet) must survive a replay or an evaluation started now."""
    import shutil

    from rtdecode.tools.replay import decoder_messages

    folder, out, _, _, _ = decoded
    live = tmp_path / "out"
    shutil.copytree(out, live)
    table = live / "sub-01" / "ses-01" / "results.tsv"
    torn = table.read_bytes() + b"abc:1:2:realtime\t1"  # half a row, mid-write
    table.write_bytes(torn)
    keys = (live / "sub-01" / "ses-01" / "reconstructed.keys").read_bytes()
    (live / "sub-01" / "ses-01" / "reconstructed.keys").write_bytes(keys + b"half")
    assert len([m for m in decoder_messages(live) if m.fields.get("stage") == "retrieval"]) == 24
    assert main(["evaluate", str(folder.path), "--decoded", str(live), "--out", str(tmp_path / "ev")]) == 0
    assert table.read_bytes() == torn  # the torn row is the decoder's to finish, not a reader's to cut
    assert (live / "sub-01" / "ses-01" / "reconstructed.keys").read_bytes() == keys + b"half"


def test_histograms_take_an_oracles_scores(tmp_path):
    """PixCorr 1.0 and 0.9999999999999998 (a perfect score, rounded two ways): numpy cannot cut that range
    into 20 bins ('Too many bins for data range'), which made an oracle run exit 2."""
    from rtdecode.evaluate.report import write_histograms
    from rtdecode.evaluate.score import Scores

    rows = [{"version": "realtime", "PixCorr": v, "SSIM": 1.0} for v in (1.0, 0.9999999999999998, 1.0)]
    rows.append({"version": "endofrun", "PixCorr": float("nan"), "SSIM": 0.5})  # a constant image's PixCorr
    out = write_histograms(Scores(rows, [], []), tmp_path / "histograms.png")
    assert Image.open(out).size[0] > 100
    # and the perfect scores are drawn: a bar as narrow as their spread (2e-16) was invisible
    only = write_histograms(Scores(rows[:3], [], []), tmp_path / "pixcorr.png", banner="ORACLE CHECK (not a result)")
    pixels = np.asarray(Image.open(only).convert("RGB")).astype(int)
    panel = pixels[:, : pixels.shape[1] // 2]  # PixCorr's panel, the left one (SSIM's is the right)
    bar = (panel[..., 2] - panel[..., 0] > 40).sum()  # matplotlib's first colour (blue) over white
    assert bar > 1000, bar


def test_summary_keeps_every_column_and_gives_chance_only_beside_a_figure(tmp_path):
    """Metrics not computed stay in summary.md as n/a; '2-way 50%' only where a 2-way figure is."""
    from rtdecode.evaluate.report import SUMMARY_COLUMNS, write_tables
    from rtdecode.evaluate.score import Scores

    base = {"version": "realtime", "run": "all", "trials": 7, "images": 7, "reconstructions": 7, "PixCorr": 0.1,
            "SSIM": 0.3, "retrieval_images": 7, "retrieval_brains": 7, "image_for_brain_top1_all": 0.25,
            "brain_for_image_top1_all": 0.5}
    rows = [{**base, "repeats": "averaged"}, {**base, "repeats": "single-trial", "AlexNet(2)": 0.75}]
    paths = write_tables(Scores([], rows, []), tmp_path, "Evaluation of sub-01 ses-01")
    lines = paths["summary_md"].read_text().splitlines()
    head = [c.strip() for c in lines[2].strip("|").split("|")]
    assert head == [*SUMMARY_COLUMNS, "chance"]
    cells = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[4:6]]
    assert cells[0]["AlexNet(2)"] == cells[0]["SwAV"] == cells[0]["brain_for_image_top1_50"] == "n/a"
    assert cells[0]["chance"] == "all-way 1/7 = 14.3%"  # no 2-way figure in this row
    assert cells[1]["chance"] == "2-way 50%; all-way 1/7 = 14.3%" and cells[1]["AlexNet(2)"] == "75.0%"
