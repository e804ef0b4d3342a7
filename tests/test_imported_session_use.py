"""A session brought in by ``rtdecode session import`` and used after: one TR per session, events rows that
show no image, and a session's own images (not built-in ids) through glm-tune and calibrate (--images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from test_session_import import recorded, write_inputs  # noqa: F401 (recorded: the fixture)

from rtdecode.base.recorded import session_folder
from rtdecode.base.session import read_tsv
from rtdecode.cli import main
from rtdecode.glm.criteria import MIN_PAIRS
from rtdecode.glm.tuning import GLMTuning


def _import(session: Path, groups: list[list[str]]) -> int:
    return main(["session", "import", str(session), *[a for g in groups for a in ("--run", *g)]])


def test_a_run_at_another_tr_is_refused_by_a_session_recorded_at_one(tmp_path, recorded, capsys):  # noqa: F811
    mask, runs = recorded
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert _import(session, write_inputs(tmp_path / "a", mask, runs[:1])) == 0
    later = write_inputs(tmp_path / "b", mask, runs[1:2], tr=2.0)
    capsys.readouterr()
    assert _import(session, later) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{later[0][0]}: TR 2 s, but the session {session} was recorded at TR 1.5 s" in err
    assert [r["run"] for r in read_tsv(session / "runs.tsv")] == ["1"]  # nothing written
    assert len(read_tsv(session / "imported.tsv")) == 1
    assert main(["glm", str(session), "--out", str(tmp_path / "g")]) == 0  # the session still fits


def test_events_rows_without_an_image_are_skipped_and_counted(tmp_path, recorded, capsys):  # noqa: F811
    mask, runs = recorded
    groups = write_inputs(tmp_path / "a", mask, runs[:1])
    events = Path(groups[0][1])
    lines = events.read_text().splitlines()
    # a fixation row before the trials and one after, as BIDS tables carry them
    lines[1:1] = ["0.000\t2.000\tfixation\tn/a\tn/a"]
    lines.append("89.000\t1.000\tfixation\tn/a\tn/a")
    events.write_text("\n".join(lines) + "\n")
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert _import(session, groups) == 0
    out = capsys.readouterr().out
    assert "note: sub-x_run-1_events.tsv: 2 row(s) with image n/a (no image shown, e.g. fixation) skipped" in out
    stored = read_tsv(session / "func" / f"{session_folder(session).prefix(1)}_events.tsv")
    assert [r["image"] for r in stored] == list(runs[0][0].image)
    # another bad id is still refused, named by the table's own row (the fixation row counts)
    lines[3] = lines[3].replace("sim-", "sim/")
    events.write_text("\n".join(lines) + "\n")
    assert _import(tmp_path / "t" / "sub-01" / "ses-01", groups) == 2
    assert "row 3, column image: expected at most 128 letters" in capsys.readouterr().err


def _own_images(tmp_path: Path, mask, runs) -> tuple[Path, Path, list[str]]:
    """The runs imported with the lab's own ids (own-NNNNN), a folder of their PNGs, and the ids."""
    groups = write_inputs(tmp_path / "a", mask, runs)
    for g in groups:
        Path(g[1]).write_text(Path(g[1]).read_text().replace("sim-", "own-"))
    session = tmp_path / "s" / "sub-01" / "ses-01"
    assert _import(session, groups) == 0
    ids = sorted({im.replace("sim-", "own-") for events, _, _ in runs for im in events.image})
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return session, folder, ids


def test_glm_tune_scores_a_sessions_own_images_given_as_a_folder(tmp_path, recorded, capsys):  # noqa: F811
    """Every image repeats across the 3 runs; all but 3 held out leaves 9 repeat pairs: without the images'
    features the error says so (found, minimum, what to do); with --images the encoding score tunes."""
    mask, runs = recorded
    session, folder, ids = _own_images(tmp_path, mask, runs)
    argv = ["glm-tune", str(session), "--out", str(tmp_path / "t"), "--holdout", ",".join(ids[3:])]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"9 pair(s) of repeated training images found, at least {MIN_PAIRS} needed" in err
    assert "hold out fewer repeated images, or give the images' features (--images DIR)" in err
    assert main([*argv, "--images", str(folder)]) == 0
    assert GLMTuning.load(tmp_path / "t").criterion == "cross-validated encoding score"
    (folder / f"{ids[1]}.png").unlink()  # a shown id without a file: one line naming the id and the folder
    assert main([*argv, "--images", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"image id '{ids[1]}': no {ids[1]}.png, .jpg or .jpeg in {folder}" in err


def test_calibrate_trains_on_a_sessions_own_images(tmp_path, recorded, capsys):  # noqa: F811
    mask, runs = recorded
    session, folder, ids = _own_images(tmp_path, mask, runs)
    argv = ["calibrate", "--session", str(session), "--subject", "01", "--out", str(tmp_path / "m"), "--epochs", "1",
            "--no-report", "--holdout", ",".join(ids[:5])]
    capsys.readouterr()
    assert main(argv) == 2
    assert "--images DIR" in capsys.readouterr().err  # the built-in ids' error says what to do
    assert main([*argv, "--images", str(folder)]) == 0
    evaluation = json.loads((tmp_path / "m" / "training.json").read_text())["evaluation"]
    assert evaluation["held_out_images"] == 5


def test_images_go_with_a_session_and_one_file_per_id(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("own-1.png", "own-1.jpg", "own-2.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    assert main(["calibrate", "--dataset", str(tmp_path), "--subject", "a", "--out", str(tmp_path / "m"), "--images",
                 str(folder)]) == 2
    assert f"--images {folder} goes with --session" in capsys.readouterr().err
    assert main(["glm-tune", str(tmp_path / "s" / "sub-01" / "ses-01"), "--out", str(tmp_path / "t"), "--images",
                 str(folder)]) == 2
    assert f"{folder}: image id 'own-1' has more than one file" in capsys.readouterr().err
