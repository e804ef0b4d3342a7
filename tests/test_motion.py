import numpy as np
import pytest

from rtdecode.ingest.reader import Volume
from rtdecode.preprocess.motion import RigidReference
from rtdecode.preprocess.pipeline import RunPreprocessor
from rtdecode.preprocess.qa import RunningQA, framewise_displacement
from rtdecode.preprocess.rigid import matrix_to_params, params_to_matrix
from rtdecode.simulator.phantom import brain_volume


def test_params_matrix_round_trip(rng):
    centre = np.array([3.0, -7.0, 11.0])
    for _ in range(20):
        p = np.r_[rng.uniform(-5, 5, 3), rng.uniform(-0.3, 0.3, 3)]
        np.testing.assert_allclose(matrix_to_params(params_to_matrix(p, centre), centre), p, atol=1e-10)


@pytest.mark.slow
def test_recovers_known_motion_up_to_3mm_3deg(rng):
    shape, voxel = (60, 72, 40), 3.0
    ref, affine = brain_volume(shape, voxel)
    reference = RigidReference(ref, affine)
    errors = []
    for _ in range(10):
        truth = np.r_[rng.uniform(-3, 3, 3), np.deg2rad(rng.uniform(-3, 3, 3))]
        moved, _ = brain_volume(shape, voxel, params=truth)
        moved = moved + rng.normal(0, 10, shape).astype(np.float32)
        est = reference.params(reference.register(moved, affine))
        errors.append(np.r_[np.abs(est[:3] - truth[:3]), np.rad2deg(np.abs(est[3:] - truth[3:]))])
    errors = np.array(errors)
    assert np.median(errors[:, :3]) <= 0.1, errors
    assert np.median(errors[:, 3:]) <= 0.1, errors


def test_registration_to_session_reference_maps_the_mask(rng):
    shape, voxel = (60, 72, 48), 3.0
    session_ref, affine = brain_volume(shape, voxel)
    offset = np.array([2.0, -1.5, 1.0, 0.0, 0.0, np.deg2rad(2.0)])
    run_ref, _ = brain_volume(shape, voxel, params=offset)
    pre = RunPreprocessor(Volume(run_ref, affine), session_reference=Volume(session_ref, affine))
    est = RigidReference(session_ref, affine).params(pre.registration)
    np.testing.assert_allclose(est, offset, atol=0.25)
    # The run reference, seen through the registration, looks like the session reference in the mask.
    out = pre.process(Volume(run_ref, affine))
    # (Not 1.0: the phantom itself is resampled from a 2 mm template at other positions.)
    expected = session_ref[pre.mask.data]
    corrected = np.corrcoef(out.vector, expected)[0, 1]
    uncorrected = np.corrcoef(run_ref[pre.mask.data], expected)[0, 1]
    assert corrected > 0.95 and uncorrected < 0.85


def test_run_preprocessor_rejects_other_grids(small_run):
    from rtdecode.base.errors import IngestError

    pre = RunPreprocessor(Volume(small_run.volumes[0], small_run.affine))
    with pytest.raises(IngestError, match="differs from the run's"):
        pre.process(Volume(small_run.volumes[1][:-1], small_run.affine, source="x.dcm"))


def test_qa_measures(rng):
    assert framewise_displacement(np.zeros(6), None) == 0.0
    fd = framewise_displacement(np.r_[0.1, 0, -0.2, 0.01, 0, 0], np.zeros(6))
    assert fd == pytest.approx(0.3 + 50 * 0.01)
    qa = RunningQA(50)
    base = rng.normal(100, 1, 50)
    for _t in range(30):
        dvars, tsnr = qa.update(base + rng.normal(0, 2, 50))
    assert 30 < tsnr < 70  # mean 100, temporal sd 2 -> about 50
    assert 1.5 < dvars < 4.5  # sqrt(2) * 2
