"""The motion estimator's passes (issue 34, speed): the coarse pass on a half-resolution grid whose
affine puts every half voxel where its eight full voxels are, a middle pass on the steepest voxels,
and a last pass on every sampled voxel."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.preprocess.motion import STEEP_POINTS, RigidReference, half_affine, halve
from rtdecode.preprocess.rigid import rotation_matrix
from rtdecode.simulator.phantom import brain_volume


def test_a_halved_volume_lies_where_its_voxels_were(rng):
    """A volume that is a linear function of world position, halved, takes at each half voxel the value of
    that function at the half voxel's world position (odd sides: the last row, column and slice drop)."""
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(0.2, -0.1, 0.3) @ np.diag([2.0, 2.5, 3.0])
    affine[:3, 3] = [-30.0, 12.0, 7.0]
    slope, offset = rng.normal(size=3), 5.0
    ijk = np.indices((11, 14, 9)).reshape(3, -1).T.astype(float)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    data = (world @ slope + offset).reshape(11, 14, 9).astype(np.float32)
    half = halve(data)
    assert half.shape == (5, 7, 4)
    hijk = np.indices(half.shape).reshape(3, -1).T.astype(float)
    hworld = hijk @ half_affine(affine)[:3, :3].T + half_affine(affine)[:3, 3]
    np.testing.assert_allclose(half.ravel(), hworld @ slope + offset, atol=1e-4)


def test_the_middle_pass_samples_the_steepest_voxels_and_the_last_pass_all():
    """On a 2 mm whole brain the full-resolution voxel sample is ~30k; the middle pass keeps the
    STEEPEST_POINTS steepest of them, the last pass all (its estimate is the one every voxel gives)."""
    ref, affine = brain_volume((100, 100, 52), 2.0)
    coarse, steep, last = RigidReference(ref, affine).levels
    assert coarse.half and not steep.half and not last.half
    assert len(steep.points) == STEEP_POINTS < len(last.points) // 2
    gradient = np.linalg.norm(np.stack(np.gradient(ref)), axis=0)
    to_vox = np.linalg.inv(affine)
    def steepness(points):
        ijk = np.rint(points @ to_vox[:3, :3].T + to_vox[:3, 3]).astype(int)
        return gradient[tuple(ijk.T)]
    assert steepness(steep.points).min() >= np.percentile(steepness(last.points), 75)
    without = RigidReference(ref, affine, steep_points=0).levels
    assert len(without) == 2 and len(without[1].points) == len(last.points)


def test_the_preprocess_bench_measures_motion_error_against_the_true_motion():
    """``rtdecode bench preprocess`` prints how far the estimated motion lies from the simulator's (issue
    34: motion error no worse than before); small against the true motion, large against a wrong one,
    and printed with its digits (not 0.00)."""
    from rtdecode.scanner.bench import bench_preprocess
    from rtdecode.simulator.scanner import simulate_run
    from rtdecode.tools.bench import _writer, format_table

    run = simulate_run(5, shape=(40, 48, 28), voxel_mm=4.0, max_mm=2.0, max_deg=2.0, seed=5)
    assert np.abs(run.motion[1:, :3]).max() > 0.4 and np.rad2deg(np.abs(run.motion[1:, 3:]).max()) > 0.8  # it moves
    right = bench_preprocess(run.volumes, run.affine, _writer("mosaic"), n_voxels=400, motion=run.motion)
    # 4 mm voxels on a small grid: errors near 0.1 mm / 0.2 degrees (0.006 / 0.008 on the bench's 2 mm grid)
    assert right["motion_error_max_mm"] < 0.3 and right["motion_error_max_deg"] < 0.4, right
    assert right["motion_error_median_mm"] > 0  # measured, not a constant
    wrong = bench_preprocess(run.volumes, run.affine, _writer("mosaic"), n_voxels=400, motion=-run.motion)
    assert wrong["motion_error_max_mm"] > 0.8 and wrong["motion_error_max_deg"] > 1.5, wrong
    line = next(s for s in format_table(right).splitlines() if s.startswith("motion_error_median_mm"))
    assert float(line.split()[-1]) == pytest.approx(right["motion_error_median_mm"], rel=0.01)
