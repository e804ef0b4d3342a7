"""``rtdecode screenshots``: a simulated run through the real path, then the console and display saved as PNG.

Files -> scanner side -> GLM -> acknowledged betas -> decoder -> results; then ``gui.screenshots``
draws the console in replay mode over the session and the decoder's output. With ``--model`` the given
model folder decodes; without one an untrained tiny model does, and the pictures say so: they show
the console, not decoding quality.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

UNTRAINED_NOTE = "screenshot with an UNTRAINED model: retrievals and reconstructions are at chance"


def _untrained_model(folder: Path, n_voxels: int) -> Path:
    import torch

    from models.folder import write_model_folder
    from models.mindeye2.config import standin_config
    from models.mindeye2.model import MindEye2

    torch.manual_seed(0)
    return write_model_folder(MindEye2(standin_config(["sim01"], [n_voxels], hidden=64)), folder, "sim01")


def make_screenshots(out: Path, work: Path, model: Path | None = None, volumes: int = 60) -> list[Path]:
    import nibabel as nib
    import numpy as np

    from rtdecode.base.config import config_from_dict
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
    while service.queue or service.decoded_count() < 2 * n_trials:
        threading.Event().wait(0.2)
        if not thread.is_alive():
            break
    service.stop()
    thread.join(timeout=10)
    from gui.screenshots import capture  # the only Qt in this command
    from rtdecode.tools.replay import replayed

    note = UNTRAINED_NOTE if model.name == "untrained-model" else ""
    return capture(out, replayed(side.folder.path, work / "decoded"), work / "stimuli", note)


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
