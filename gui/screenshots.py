"""``rtdecode screenshots``: a simulated run through the real path, then the console and display saved as PNG.

Files -> scanner side -> GLM -> acknowledged betas -> decoder -> results, then the console in replay
mode over the session and the decoder's output. With ``--model`` the given model folder decodes; without
one an untrained tiny model does, and the pictures say so: they show the console, not decoding quality.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path


def _untrained_model(folder: Path, n_voxels: int) -> Path:
    import torch

    from models.mindeye2.checkpoint import save_pretrained
    from models.mindeye2.config import MindEye2Config
    from models.mindeye2.model import MindEye2
    from models.standin import StandInEmbedder

    torch.manual_seed(0)
    config = MindEye2Config(subjects=["sim01"], voxels=[n_voxels], hidden=64, n_blocks=2, clip_tokens=16, clip_dim=64,
                            blurry=False, prior_depth=1, prior_dim_head=16)
    save_pretrained(MindEye2(config), folder)
    (folder / "embedder.json").write_text(json.dumps({"kind": "standin", "config": StandInEmbedder().config.to_dict()}))
    (folder / "subject.json").write_text(json.dumps({"subject": "sim01"}))
    return folder


def make_screenshots(out: Path, work: Path, model: Path | None = None, volumes: int = 60) -> list[Path]:
    import nibabel as nib
    import numpy as np

    from rtdecode.config import config_from_dict
    from rtdecode.decoder.core import Decoder
    from rtdecode.decoder.service import DecoderService
    from rtdecode.scanner import ScannerSide
    from rtdecode.simulator.paradigm import Paradigm
    from rtdecode.simulator.scanner import write_run
    from rtdecode.simulator.subjects import SubjectSpec
    from rtdecode.simulator.visit import Visit

    work, out = Path(work), Path(out)
    n_trials = int((volumes * 1.5 - 15) // 4) + 1
    visit = Visit(SubjectSpec(name="sim01", n_voxels=2000, seed=1), n_runs=1, n_repeated=0,
                  paradigm=Paradigm(volumes=volumes, trials=n_trials), shape=(64, 64, 36), voxel_mm=3.0, seed=0)
    run = visit.run(0)
    run.save_truth(work / "truth", "series-001")
    visit.save_stimuli(work / "stimuli")
    roi = np.zeros(run.shape, np.uint8)
    roi.ravel()[run.roi_index] = 1
    nib.save(nib.Nifti1Image(roi, run.affine), work / "roi.nii")
    model = model or _untrained_model(work / "untrained-model", len(run.roi_index))
    service = DecoderService(Decoder.from_folder(model, work / "stimuli"), work / "decoded", "tcp://127.0.0.1:0",
                             "tcp://127.0.0.1:0")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    cfg = config_from_dict({
        "session": {"root": str(work / "sessions"), "subject": "sim01", "session": "01"},
        "scanner": {"watch_dir": str(work / "watch"), "volumes_per_run": volumes, "missing_timeout_s": 3.0},
        "preprocess": {"mask": str(work / "roi.nii")},
        "glm": {"events": str(work / "truth" / "series-{series:03d}_events.tsv")},
        "network": {"events_port": 0, "control_port": -1, "decoder": service.receiver.address, "drain_s": 60.0},
    })
    (work / "watch").mkdir(parents=True, exist_ok=True)
    side = ScannerSide(cfg)
    writer = threading.Thread(target=write_run, args=(run, work / "watch"), kwargs={"series": 1, "speedup": 30})
    writer.start()
    side.run(until=lambda s: s.processed >= volumes, idle_timeout=30)
    writer.join()
    while service.queue or len(service.store.decoded.keys) < 2 * n_trials:
        threading.Event().wait(0.2)
        if not thread.is_alive():
            break
    service.stop()
    thread.join(timeout=10)
    return _capture(out, side.folder.path, work / "decoded", work / "stimuli", untrained=model.name == "untrained-model")


def _capture(out: Path, session: Path, decoded: Path, stimuli: Path, untrained: bool) -> list[Path]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt6 import QtWidgets

    from gui.app import load_gallery
    from gui.console import ConsoleWindow, DisplayWindow
    from gui.replay import decoder_messages, session_messages
    from gui.state import ConsoleState

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    state = ConsoleState(volumes_expected=0)
    for msg in session_messages(session):
        state.apply(msg, "scanner")
    for msg in decoder_messages(decoded):
        state.apply(msg, "decoder")
    if untrained:
        state.status += "   [screenshot with an UNTRAINED model: retrievals and reconstructions are at chance]"
    out.mkdir(parents=True, exist_ok=True)
    console = ConsoleWindow(state, load_gallery(stimuli))
    console.refresh()
    console.show()
    display = DisplayWindow(state)
    display.resize(600, 600)
    display.show()
    app.processEvents()
    display.refresh()
    app.processEvents()
    paths = [out / "console.png", out / "display.png"]
    console.grab().save(str(paths[0]))
    display.grab().save(str(paths[1]))
    console.close()
    display.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtdecode screenshots")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--work", type=Path, default=Path("demo-output/screenshots"))
    parser.add_argument("--model", type=Path, default=None, help="a calibrated model folder (default: untrained)")
    parser.add_argument("--volumes", type=int, default=60)
    args = parser.parse_args(argv)
    for path in make_screenshots(args.out, args.work, args.model, args.volumes):
        print(f"wrote {path}")
    return 0
