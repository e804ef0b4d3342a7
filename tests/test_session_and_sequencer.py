import numpy as np

from rtdecode.base.session import SessionFolder
from rtdecode.ingest.sequencer import RunSequencer


def test_sequencer_orders_buffers_and_gives_up_on_gaps():
    seq = RunSequencer(missing_timeout=2.0)
    assert seq.add(1, "b", now=0.0) == "buffered"
    assert seq.pop_ready(now=0.5) == []  # waiting for 0
    assert seq.add(0, "a", now=0.6) == "buffered"
    assert [d.index for d in seq.pop_ready(now=0.6)] == [0, 1]
    assert seq.add(1, "b", now=0.7) == "duplicate"
    assert seq.add(3, "d", now=1.0) == "buffered"
    assert seq.pop_ready(now=2.9) == []
    out = seq.pop_ready(now=3.1)  # 2 never came within 2 s of 3's arrival
    assert [(d.index, d.missing) for d in out] == [(2, True), (3, False)]
    assert seq.add(2, "c", now=3.2) == "late"


def test_run_store_repairs_a_torn_tail(tmp_path):
    folder = SessionFolder(tmp_path, "01", "02").create()
    store = folder.run_store(3)
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 1:4, 2:5] = True  # 18 voxels
    store.save_reference(np.ones((4, 5, 6)), np.eye(4), mask, np.eye(4))
    for i in range(3):
        store.append(np.full(18, i, np.float32), {"volume": i, "trans_x": 0.1 * i})
    store.append_missing(3)
    # A crash after a vector was written but before its row, in the middle of the next row:
    with open(store.vectors, "ab") as fh:
        fh.write(np.zeros(18, np.float32).tobytes())
    with open(store.confounds, "a") as fh:
        fh.write("4\tok\t0.1")
    rows, vectors = store.load()
    assert [r["volume"] for r in rows] == ["0", "1", "2", "3"] and rows[3]["status"] == "missing"
    assert vectors.shape == (3, 18) and vectors[2, 0] == 2
    store.append(np.full(18, 4, np.float32), {"volume": 4})
    rows, vectors = store.load()
    assert [r["volume"] for r in rows] == ["0", "1", "2", "3", "4"] and vectors.shape == (4, 18)
    assert store.raw_dir.parent.name == "func" and "sub-01_ses-02_task-rt_run-03" in store.confounds.name
