"""Panoptic quality on small hand-made maps, each figure worked out by hand from the COCO panoptic
reference's rules (IoU > 0.5 matching, void left out of the union, crowd and void excusing
unmatched predictions, categories without TP / FP / FN left out of the means)."""
import json

import cv2
import numpy as np
import pytest

from detseg.data.panoptic_format import id_to_rgb, rgb_to_id
from detseg.evaluation.panoptic_quality import PQStats, pq_compute, pq_image

CATEGORIES = {1: {"id": 1, "name": "circle", "isthing": 1}, 2: {"id": 2, "name": "square", "isthing": 1},
              10: {"id": 10, "name": "sky", "isthing": 0}, 11: {"id": 11, "name": "ground", "isthing": 0}}


def seg(i, cat, **kw):
    return {"id": i, "category_id": cat, **kw}


def hand_case():
    """10 x 10: a circle (25 px), sky beside it (25), a small circle (10), void below (40)."""
    gt = np.zeros((10, 10), np.int64)
    gt[:5, :5], gt[:5, 5:], gt[5:, :2] = 1, 2, 3
    gt_segs = [seg(1, 1, area=25, iscrowd=0), seg(2, 10, area=25, iscrowd=0), seg(3, 1, area=10, iscrowd=0)]
    pred = np.zeros((10, 10), np.int64)
    pred[:5, :4] = 7   # circle, 20 of gt 1's 25 px: IoU 0.8
    pred[:5, 4:] = 8   # sky, 30 px holding all of gt 2: IoU 25 / 30
    pred[5:, :2] = 9   # gt 3's pixels, called a square: FN circle, FP square
    pred[5:, 2:] = 5   # a circle wholly on void: neither matched nor a false positive
    pred_segs = [seg(7, 1), seg(8, 10), seg(9, 2), seg(5, 1)]
    return gt, gt_segs, pred, pred_segs


def test_hand_case_counts_and_means():
    stats = pq_image(*hand_case(), CATEGORIES)
    c1, c2, c10 = stats[1], stats[2], stats[10]
    assert (c1.tp, c1.fp, c1.fn) == (1, 0, 1) and c1.iou == pytest.approx(0.8)
    assert (c2.tp, c2.fp, c2.fn) == (0, 1, 0)
    assert (c10.tp, c10.fp, c10.fn) == (1, 0, 0) and c10.iou == pytest.approx(25 / 30)
    out = stats.summary(CATEGORIES)
    pq1 = 0.8 / 1.5
    assert out["per_class"][1] == pytest.approx({"pq": pq1, "sq": 0.8, "rq": 1 / 1.5})
    assert out["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert out["per_class"][11] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # absent: not in the means
    assert out["All"] == pytest.approx({"pq": (pq1 + 0 + 25 / 30) / 3, "sq": (0.8 + 0 + 25 / 30) / 3,
                                        "rq": (1 / 1.5 + 0 + 1) / 3, "n": 3})
    assert out["Things"] == pytest.approx({"pq": pq1 / 2, "sq": 0.4, "rq": 1 / 3, "n": 2})
    assert out["Stuff"] == pytest.approx({"pq": 25 / 30, "sq": 25 / 30, "rq": 1.0, "n": 1})


def test_ground_truth_against_itself_is_perfect():
    gt, gt_segs, _, _ = hand_case()
    pred_segs = [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs]
    out = pq_image(gt, gt_segs, gt.copy(), pred_segs, CATEGORIES).summary(CATEGORIES)
    for name in ("All", "Things", "Stuff"):
        assert (out[name]["pq"], out[name]["sq"], out[name]["rq"]) == (1.0, 1.0, 1.0)
    assert out["All"]["n"] == 2 and out["Things"]["n"] == 1


def test_void_pixels_leave_the_union():
    """A prediction twice its segment's size, the extra half on void: IoU 1, not 0.5 (no match)."""
    gt = np.zeros((4, 10), np.int64)
    gt[:, :5] = 1
    pred = np.full((4, 10), 4, np.int64)
    s = pq_image(gt, [seg(1, 2, area=20, iscrowd=0)], pred, [seg(4, 2)], CATEGORIES)[2]
    assert (s.tp, s.fp, s.fn, s.iou) == (1, 0, 0, 1.0)
    # over labelled background instead of void, the same prediction is IoU 0.5: no match
    gt[:, 5:] = 2
    stats = pq_image(gt, [seg(1, 2, area=20, iscrowd=0), seg(2, 11, area=20, iscrowd=0)], pred,
                     [seg(4, 2)], CATEGORIES)
    assert (stats[2].tp, stats[2].fp, stats[2].fn, stats[11].fn) == (0, 1, 1, 1)


def test_crowd_regions_excuse_their_own_category_only():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :3] = 1                      # a crowd of circles, 30 px
    gt[:, 3:] = 2                      # ground, 70 px
    gt_segs = [seg(1, 1, area=30, iscrowd=1), seg(2, 11, area=70, iscrowd=0)]
    pred = np.full((10, 10), 6, np.int64)
    pred[:, :2] = 5                    # a circle on the crowd (20 px) ...
    pred[:5, 2] = 5                    # ... and 5 px of it beside: 20 / 25 on the crowd
    pred_segs = [seg(5, 1), seg(6, 11)]
    stats = pq_image(gt, gt_segs, pred, pred_segs, CATEGORIES)
    assert (stats[1].tp, stats[1].fp, stats[1].fn) == (0, 0, 0)  # no FN for the crowd, no FP
    assert stats[11].tp == 1
    # the same pixels called squares: the circles' crowd does not excuse them
    stats = pq_image(gt, gt_segs, pred, [seg(5, 2), seg(6, 11)], CATEGORIES)
    assert (stats[2].fp, stats[1].fn) == (1, 0)


def test_a_prediction_matches_once_and_wrong_category_never_matches():
    gt = np.zeros((2, 10), np.int64)
    gt[:, :6] = 1
    pred = np.zeros((2, 10), np.int64)
    pred[:, :3], pred[:, 3:6] = 1, 2  # two halves of one circle: each IoU 0.5, neither above
    stats = pq_image(gt, [seg(1, 1, area=12, iscrowd=0)], pred, [seg(1, 1), seg(2, 1)], CATEGORIES)
    assert (stats[1].tp, stats[1].fp, stats[1].fn) == (0, 2, 1)


@pytest.mark.parametrize("pred_segs, ids, message", [
    ([seg(7, 1)], {7, 8}, r"\[8\] are in the map but not in segments_info"),
    ([seg(7, 1), seg(9, 1)], {7}, r"\[9\] are in segments_info but not in the map"),
    ([seg(7, 3)], {7}, "unknown category_id 3"),
])
def test_inconsistent_predictions_are_refused_naming_image_and_segment(pred_segs, ids, message):
    gt = np.ones((4, 4), np.int64)
    pred = np.zeros((4, 4), np.int64)
    for k, i in enumerate(sorted(ids)):
        pred[k] = i
    with pytest.raises(ValueError, match=message) as e:
        pq_image(gt, [seg(1, 1, area=16, iscrowd=0)], pred, pred_segs, CATEGORIES, image="img9")
    assert "image img9" in str(e.value)
    with pytest.raises(ValueError, match="differ in size"):
        pq_image(gt, [seg(1, 1, area=16, iscrowd=0)], pred[:2], [seg(7, 1)], CATEGORIES)


def test_png_id_encoding_round_trips():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 256 ** 3 - 1, 12345678]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[0, 3].tolist() == [0, 1, 0]
    assert (rgb_to_id(rgb) == ids).all()
    with pytest.raises(ValueError):
        id_to_rgb(np.array([[256 ** 3]]))


def test_files_in_the_coco_panoptic_format_give_the_same_figures(tmp_path):
    gt, gt_segs, pred, pred_segs = hand_case()
    for name, ids in (("gt", gt), ("pred", pred)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), id_to_rgb(ids)[..., ::-1])
    cats = list(CATEGORIES.values())
    (tmp_path / "gt.json").write_text(json.dumps({"categories": cats, "annotations": [
        {"image_id": 3, "file_name": "a.png", "segments_info": gt_segs}]}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [
        {"image_id": 3, "file_name": "a.png", "segments_info": pred_segs}]}))
    out = pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"))
    # JSON keys are strings; the figures are those of the arrays
    expected = pq_image(gt, gt_segs, pred, pred_segs, CATEGORIES).summary(CATEGORIES)
    assert out["All"] == pytest.approx(expected["All"]) and out["Stuff"] == pytest.approx(expected["Stuff"])
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no prediction for image 3"):
        pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"))


def test_stats_add_up_over_images():
    a = pq_image(*hand_case(), CATEGORIES)
    total = PQStats()
    total.add(a)
    total.add(a)
    assert (total[1].tp, total[1].fn, total[2].fp) == (2, 2, 2)
    assert total.summary(CATEGORIES)["All"]["pq"] == pytest.approx(a.summary(CATEGORIES)["All"]["pq"])
