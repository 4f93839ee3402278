"""ShapesBench's ground-truth measures on synthetic results whose verdicts are known: a perfect drag, a duplicated
shape, a blob left behind at the source, a shifted shape, and whole scenes for the SDEdit track."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdedrag.shapes.data import Shape, render, sample_background
from sdedrag.shapes.metrics import (
    BACKGROUND_TOLERANCE,
    CLEAN_FRACTION,
    PSNR_CAP,
    cases_needed,
    drag_metrics,
    drag_success,
    masked_ssim,
    paired_difference,
    reached,
    scene_metrics,
    truth_metrics,
    vacated_area,
)

SOURCE, TARGET = (20.0, 32.0), (40.0, 32.0)


@pytest.fixture()
def case():
    """A red disc on a seeded gradient-or-plain background, dragged 20 px right, a generous editable mask."""
    shape = Shape("disc", "red", SOURCE, 6.5)
    scene = render(sample_background(np.random.default_rng(0), 64), [shape])
    editable = np.zeros((64, 64), dtype=bool)
    editable[10:54, 8:56] = True
    return scene, shape, editable


def verdict(case, result):
    scene, shape, editable = case
    drag = drag_metrics(scene.image, result, shape, TARGET, editable)
    truth = truth_metrics(result, scene.moved(0, TARGET).image, scene.background, shape, TARGET, editable)
    return drag, truth, drag_success(drag, truth)


def test_the_ground_truth_itself_is_a_perfect_result(case):
    scene, _, _ = case
    drag, truth, success = verdict(case, scene.moved(0, TARGET).image)
    assert success and reached(drag)
    assert truth.truth_psnr == PSNR_CAP and truth.truth_ssim == pytest.approx(1.0)
    assert truth.vacated_error == 0 and truth.vacated_clean_fraction == 1 and truth.stray_fraction == 0


def test_a_duplicated_shape_fails(case):
    scene, shape, _ = case
    drag, truth, success = verdict(case, scene.with_shapes([shape, shape.moved(TARGET)]).image)
    assert drag.duplicated and not success
    assert truth.vacated_clean_fraction == 0 and truth.vacated_error > 100
    assert truth.stray_fraction == 0  # the copy has the shape's own colour: duplicated, not stray
    assert truth.truth_psnr < 20


def test_a_blob_left_behind_fails_although_the_shape_reached_the_target(case):
    """The demo's case 0 failure: the shape arrives, a blob of another colour stays where it was."""
    scene, shape, editable = case
    result = scene.with_shapes([shape.moved(TARGET), Shape("disc", "blue", SOURCE, 5.0)]).image
    drag, truth, success = verdict(case, result)
    assert reached(drag) and not drag.duplicated  # what the colour-only measures saw
    assert not truth.vacated_clean and not success
    blob = Shape("disc", "blue", SOURCE, 5.0).mask(64, 64)
    assert truth.stray_fraction == pytest.approx((blob & editable).sum() / editable.sum(), rel=0.1)
    clean = verdict(case, scene.moved(0, TARGET).image)[1]
    assert truth.truth_psnr < clean.truth_psnr and truth.truth_ssim < clean.truth_ssim


def test_a_faint_ghost_below_the_duplication_threshold_still_leaves_the_vacated_area_dirty(case):
    scene, shape, _ = case
    result = scene.moved(0, TARGET).image.astype(np.float64)
    vacated = vacated_area(shape, TARGET, 64, 64)
    result[vacated] = 0.6 * result[vacated] + 0.4 * np.asarray(shape.rgb)  # a pink haze, not the red itself
    drag, truth, success = verdict(case, result.round().astype(np.uint8))
    assert not drag.duplicated and reached(drag)
    assert truth.vacated_error > BACKGROUND_TOLERANCE and truth.vacated_clean_fraction < CLEAN_FRACTION
    assert not success


@pytest.mark.parametrize(("shift", "succeeds"), [(1.0, True), (4.0, False)])
def test_a_shifted_shape_succeeds_only_within_the_success_distance(case, shift, succeeds):
    scene, shape, _ = case
    drag, truth, success = verdict(case, scene.moved(0, (TARGET[0] - shift, TARGET[1])).image)
    assert drag.distance == pytest.approx(shift, abs=0.3)
    assert success is succeeds and truth.vacated_clean  # short of the target, but nothing left behind
    assert truth.truth_psnr < PSNR_CAP and truth.stray_fraction == 0


def test_noise_in_the_mask_is_stray(case):
    scene, _, editable = case
    result = scene.moved(0, TARGET).image.copy()
    noise = np.random.default_rng(1).integers(0, 256, size=result.shape, dtype=np.uint8)
    result[editable] = noise[editable]
    drag, truth, success = verdict(case, result)
    assert truth.stray_fraction > 0.5 and truth.truth_ssim < 0.2 and not success


def test_masked_ssim_ignores_pixels_outside_the_mask(case):
    scene, _, editable = case
    changed = scene.image.copy()
    changed[:4] = 0
    assert masked_ssim(scene.image, changed, editable) == pytest.approx(1.0)
    assert masked_ssim(scene.image, changed, ~editable) < 0.9


def test_scene_metrics_count_recovered_missing_and_extra_shapes():
    shapes = [Shape("disc", "red", (16.0, 16.0), 5.0), Shape("square", "blue", (44.0, 44.0), 5.0)]
    scene = render(sample_background(np.random.default_rng(2), 64), shapes)
    perfect = scene_metrics(scene.image, scene)
    assert perfect.success and perfect.recovered == 1 and perfect.extra_shapes == 0 and perfect.truth_psnr == PSNR_CAP
    missing = scene_metrics(scene.without(1).image, scene)
    assert missing.recovered == 0.5 and not missing.success
    extra = scene_metrics(scene.with_shapes([*shapes, Shape("disc", "green", (44.0, 16.0), 5.0)]).image, scene)
    assert extra.recovered == 1 and extra.extra_shapes == 1 and not extra.success
    moved = scene_metrics(scene.moved(0, (22.0, 16.0)).image, scene)
    assert moved.recovered == 0.5 and moved.extra_shapes == 1


def test_cases_needed_follows_the_normal_power_formula():
    differences = np.tile([0.0, 2.0], 50)  # mean 1, sd ~1.005
    z = 1.959964 + 0.841621
    assert cases_needed(differences) == math.ceil((z * differences.std(ddof=1)) ** 2)
    assert cases_needed(np.tile([0.0, 2.0], 50) * 0.0 + 1.0) == 0  # a constant difference needs no spread
    assert cases_needed([1.0, -1.0]) == math.inf
    paired = paired_difference([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert paired["mean"] == 2.0 and paired["n"] == 3
