"""The real Siemens Skyra real-time export in ../shared/data streams through the real watcher."""

import shutil
import time
import warnings

import numpy as np
import pydicom
import pytest

from rtdecode.wire.sockets import Publisher, Subscriber

from conftest import SKYRA_RUN, SideThread, drain, make_config

pytestmark = pytest.mark.skipif(not SKYRA_RUN.is_dir(), reason="../shared/data/siemens-skyra-mosaic-run not present")


def test_skyra_run_through_the_watcher(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom's import-time "experimental" notice
        from nibabel.nicom import dicomwrappers

    files = sorted(SKYRA_RUN.glob("001_000013_*.dcm"))
    assert len(files) == 11
    pseudonym = str(pydicom.dcmread(str(files[0])).PatientName)
    assert pseudonym  # the export carries one: the check below means something
    cfg = make_config(tmp_path, scanner={"volumes_per_run": 11, "partial_timeout_s": 0.5, "missing_timeout_s": 5.0})
    watch = cfg.scanner.watch_dir
    pub = Publisher("tcp://127.0.0.1:0")
    sub = Subscriber(pub.address)
    try:
        time.sleep(0.3)
        with SideThread(cfg, n=11, timeout=60, publisher=pub) as st:
            for f in files:
                if f.name.endswith("000005.dcm"):
                    # First a broken transfer of volume 5 lands under its real name and stays cut ...
                    shutil.copy(SKYRA_RUN / "truncated_001_000013_000005.dcm.bad", watch / f.name)
                    deadline = time.monotonic() + 10
                    while (watch / f.name).exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                # ... then the scanner's complete copy.
                shutil.copy(f, tmp_path / f.name)
                shutil.move(tmp_path / f.name, watch / f.name)
                time.sleep(0.05)
            st.wait()
        got = drain(sub, 3.0, n_volumes=11)
    finally:
        sub.close()
        pub.close()
    assert [e.index for e in st.events] == list(range(11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(str(files[0])))
    store = st.side.runs[13].store
    raw = store.raw_dir / "vol-000000.nii"
    import nibabel as nib

    img = nib.load(raw)
    assert img.shape == (64, 64, 27)
    np.testing.assert_allclose(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(img.dataobj), wrapper.get_data())
    rejected = st.side.folder.rejected()
    assert len(rejected) == 1 and rejected[0]["file"] == "001_000013_000005.dcm"
    assert "pixel data holds" in rejected[0]["reason"] and "still incomplete" in rejected[0]["reason"]
    # Patient fields: nowhere in the session folder, nowhere on the wire.
    needles = [pseudonym.encode(), pseudonym.split("_")[0].encode()]
    for path in cfg.session.root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), path
    wire = repr([(m.type, m.fields) for m in got]).encode()
    assert any(m.type == "volume" for m in got)
    assert not any(n in wire for n in needles)
