"""The scanner side end to end: real files in a real folder, the real watcher, real sockets."""

import shutil
import time

import nibabel as nib
import numpy as np
import pytest

from rtdecode.base.session import SessionFolder
from rtdecode.simulator.dicom_writer import write_mosaic
from rtdecode.simulator.scanner import format_name, write_in_chunks

from conftest import SideThread, drain, make_config

PATTERN = "001_{run:06d}_{volume:06d}.dcm"


def _dicom_bytes(tmp_path, run, t, series=7, subject=""):
    """``subject``: whose series (the simulated SeriesInstanceUID is each participant's own)."""
    path = tmp_path / f"stage_{series}_{t}.dcm"
    write_mosaic(path, run.volumes[t], run.affine, series_number=series, instance=t + 1, subject=subject)
    data = path.read_bytes()
    path.unlink()
    return data


def _put(watch, name, payload, chunked=False):
    if chunked:
        write_in_chunks(payload, watch / name, n_chunks=3, pause_s=0.03)
    else:
        tmp = watch.parent / (name + ".part")
        tmp.write_bytes(payload)
        shutil.move(tmp, watch / name)


@pytest.mark.parametrize("mode", ["events", "polling"])
def test_every_volume_once_and_in_order_despite_chunks_duplicates_order_and_junk(tmp_path, small_run, mode):
    cfg = make_config(tmp_path, scanner={"mode": mode})
    watch = cfg.scanner.watch_dir
    payloads = [_dicom_bytes(tmp_path, small_run, t) for t in range(12)]
    order = [0, 1, 3, 2, 4, 6, 5, 7, 8, 9, 11, 10]  # pairs swapped: out-of-order arrival
    with SideThread(cfg, n=12, timeout=60) as st:
        for k, t in enumerate(order):
            name = format_name(PATTERN, 7, t)
            _put(watch, name, payloads[t], chunked=(k % 3 == 0))
            if t in (2, 8):
                _put(watch, name + ".dup", payloads[t])  # unrelated name: ignored by the pattern
                (watch / name).unlink()
                _put(watch, name, payloads[t])  # the same volume written again: a duplicate
            if k == 5:
                (watch / "notes.txt").write_text("junk")
                (watch / "001_000007_junk.dcm").write_bytes(b"not dicom")
            time.sleep(0.05)
        st.wait()
    assert st.indices == [(1, t) for t in range(12)]
    store = SessionFolder(cfg.session.root, "01", "01").run_store(1)
    rows, vectors = store.load()
    assert [int(r["volume"]) for r in rows] == list(range(12))
    assert vectors.shape == (12, int(np.asarray(store.load_reference()[1].dataobj).sum()))  # ended runs keep no preprocessor
    assert len(list(store.raw_dir.glob("vol-*.nii"))) == 12
    # Motion estimates follow the simulated head (volume 0 is the reference).
    est = np.array([[float(r[c]) for c in ("trans_x", "trans_y", "trans_z")] for r in rows])
    assert np.median(np.abs(est - small_run.motion[:, :3])) < 0.3


def test_bad_inputs_are_set_aside_and_the_run_goes_on(tmp_path, small_run, caplog):
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    payloads = [_dicom_bytes(tmp_path, small_run, t) for t in range(12)]
    wrong_size = tmp_path / "wrong.dcm"
    write_mosaic(wrong_size, small_run.volumes[4][:-2], small_run.affine, series_number=7, instance=5)
    other_series = tmp_path / "other.dcm"
    write_mosaic(other_series, small_run.volumes[6], small_run.affine, series_number=7, instance=7,
                 series_uid="1.2.3.999")
    with SideThread(cfg, n=8, timeout=60) as st:
        for t in range(12):
            name = format_name(PATTERN, 7, t)
            if t == 3:
                (watch / name).write_bytes(payloads[t][: len(payloads[t]) // 2])  # truncated for good
            elif t == 4:
                shutil.copy(wrong_size, watch / name)
            elif t == 6:
                shutil.copy(other_series, watch / name)
            elif t == 9:
                (watch / name).write_bytes(b"\x00" * 200)
            else:
                _put(watch, name, payloads[t])
            time.sleep(0.05)
        st.wait()
    assert st.indices == [(1, t) for t in (0, 1, 2, 5, 7, 8, 10, 11)]
    folder = SessionFolder(cfg.session.root, "01", "01")
    reasons = {r["file"]: r["reason"] for r in folder.rejected()}
    assert "still incomplete after 1 s" in reasons[format_name(PATTERN, 7, 3)]
    assert "differs from the run's" in reasons[format_name(PATTERN, 7, 4)]
    assert "series changed mid-run" in reasons[format_name(PATTERN, 7, 6)]
    assert "not a DICOM file" in reasons[format_name(PATTERN, 7, 9)]
    assert sorted(p.name.split("_", 1)[1] for p in (tmp_path / "rejected").iterdir()) == sorted(reasons)
    rows, vectors = folder.run_store(1).load()
    assert [r["status"] for r in rows].count("missing") == 4 and len(vectors) == 8
    assert "set aside" in caplog.text


def test_restart_resumes_without_losing_or_repeating(tmp_path, small_run):
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    with SideThread(cfg, n=5, timeout=60) as st:
        for t in range(5):
            _put(watch, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t))
            time.sleep(0.05)
        st.wait()
    assert st.indices == [(1, t) for t in range(5)]
    # A new process: old files are still in the folder, the rest of the run arrives.
    with SideThread(cfg, n=7, timeout=60) as st2:
        for t in range(5, 12):
            _put(watch, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t))
            time.sleep(0.05)
        st2.wait()
    assert st2.indices == [(1, t) for t in range(5, 12)]
    rows, vectors = SessionFolder(cfg.session.root, "01", "01").run_store(1).load()
    assert [int(r["volume"]) for r in rows] == list(range(12)) and len(vectors) == 12
    # FD continues from the stored motion instead of restarting at zero.
    assert st2.events[0].fd > 0


def test_restarted_scanner_run_becomes_a_new_run(tmp_path, small_run):
    cfg = make_config(tmp_path)
    watch = cfg.scanner.watch_dir
    with SideThread(cfg, n=7, timeout=60) as st:
        for t in range(3):  # the operator aborts series 7 after three volumes ...
            _put(watch, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t, series=7))
            time.sleep(0.05)
        for t in range(4):  # ... and restarts it as series 8
            _put(watch, format_name(PATTERN, 8, t), _dicom_bytes(tmp_path, small_run, t, series=8))
            time.sleep(0.05)
        st.wait()
    assert st.indices == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    runs = SessionFolder(cfg.session.root, "01", "01").runs()
    assert [(r["run"], r["series"]) for r in runs] == [("1", "7"), ("2", "8")]


def test_events_published_on_the_wire(tmp_path, small_run):
    from rtdecode.wire.sockets import Publisher, Subscriber

    cfg = make_config(tmp_path)
    pub = Publisher("tcp://127.0.0.1:0")
    sub = Subscriber(pub.address)
    try:
        time.sleep(0.3)  # subscription in place before anything is published
        with SideThread(cfg, n=4, timeout=60, publisher=pub) as st:
            for t in range(4):
                _put(cfg.scanner.watch_dir, format_name(PATTERN, 7, t), _dicom_bytes(tmp_path, small_run, t))
                time.sleep(0.05)
            st.wait()
        got = drain(sub, 5.0, n_volumes=4)
    finally:
        sub.close()
        pub.close()
    volumes = [m for m in got if m.type == "volume"]
    assert [m.fields["index"] for m in volumes] == [0, 1, 2, 3]
    assert any(m.type == "run_started" and m.fields["n_voxels"] > 0 for m in got)
    assert len(volumes[1].fields["motion"]) == 6


def test_nifti_volumes_and_a_mask_file(tmp_path, small_run):
    mask = np.zeros(small_run.volumes[0].shape, np.uint8)
    mask[8:18, 10:20, 6:14] = 1
    nib.save(nib.Nifti1Image(mask, small_run.affine), tmp_path / "mask.nii.gz")
    cfg = make_config(tmp_path, scanner={"pattern": "vol{volume:04d}.nii"}, preprocess={"mask": str(tmp_path / "mask.nii.gz")})
    with SideThread(cfg, n=3, timeout=60) as st:
        for t in range(3):
            tmp = tmp_path / f"v{t}.nii"
            nib.save(nib.Nifti1Image(small_run.volumes[t], small_run.affine), tmp)
            shutil.move(tmp, cfg.scanner.watch_dir / f"vol{t:04d}.nii")
            time.sleep(0.05)
        st.wait()
    assert [e.vector.shape for e in st.events] == [(int(mask.sum()),)] * 3


def test_unreadable_session_reference_or_mask_stops_before_the_run(tmp_path):
    from rtdecode.base.errors import ConfigError
    from rtdecode.scanner import ScannerSide

    (tmp_path / "boldref.dcm").write_bytes(b"\x00" * 64)
    cfg = make_config(tmp_path, preprocess={"session_reference": str(tmp_path / "boldref.dcm")})
    with pytest.raises(ConfigError, match="preprocess.session_reference: cannot read .*boldref.dcm"):
        ScannerSide(cfg)
    (tmp_path / "mask.nii").write_bytes(b"garbage")
    cfg = make_config(tmp_path, preprocess={"mask": str(tmp_path / "mask.nii")})
    with pytest.raises(ConfigError, match="preprocess.mask: cannot read .*mask.nii as NIfTI"):
        ScannerSide(cfg)
