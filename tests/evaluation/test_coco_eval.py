import json

import pytest
import torch

from detseg.data.coco import CocoDataset
from detseg.evaluation.coco import COCOEvaluator, evaluate_results
from detseg.structures import Batch, Instances
from tests.conftest import coco_tiny_split


def ground_truth_as_detections(ann_file: str, image_dir: str, backend: str, out_dir=None) -> dict:
    """Feed every image's ground truth through the evaluator as if a model had predicted it."""
    ds = CocoDataset(ann_file, image_dir)
    ev = COCOEvaluator(ann_file, ds.cat_ids, ds.class_names, backend=backend, output_dir=out_dir)
    for img_id in ds.ids:
        info = ds.coco.imgs[img_id]
        h, w = info["height"], info["width"]
        a = ds.load_annotations(img_id, h, w)
        hs, ws = h // 2, w // 2  # as predicted on a half-size input
        boxes = torch.from_numpy(a["boxes"]) * torch.tensor([ws / w, hs / h, ws / w, hs / h])
        inst = Instances((hs, ws), boxes, torch.ones(len(boxes)), torch.from_numpy(a["labels"]))
        ev.process(Batch(images=torch.zeros(1, 3, hs, ws, dtype=torch.uint8), image_ids=[img_id],
                         image_sizes=[(hs, ws)], orig_sizes=[(h, w)]), [inst])
    return ev.evaluate()


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_ground_truth_scores_ap_one_on_shapes(shapes_data, backend, tmp_path):
    split = shapes_data["val"]
    m = ground_truth_as_detections(split["ann_file"], split["image_dir"], backend, tmp_path)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in m["per_class_AP"].values())
    assert all(v == pytest.approx(1.0) for v in m["per_class_recall"].values())
    results = json.loads((tmp_path / "coco_results.json").read_text())
    gt = json.load(open(split["ann_file"]))
    assert {r["category_id"] for r in results} == {a["category_id"] for a in gt["annotations"]}


def test_ground_truth_scores_ap_one_on_coco_tiny_and_backends_agree():
    ann, images = coco_tiny_split("val")
    a = ground_truth_as_detections(ann, images, "pycocotools")
    b = ground_truth_as_detections(ann, images, "faster_coco_eval")
    assert a["AP"] == pytest.approx(1.0) and a["AP50"] == pytest.approx(1.0)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert abs(a[key] - b[key]) <= 1e-6


def test_backends_agree_on_imperfect_detections(shapes_data):
    split = shapes_data["val"]
    gt = json.load(open(split["ann_file"]))
    g = torch.Generator().manual_seed(0)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = (torch.rand(4, generator=g) - 0.5) * 0.4 * torch.tensor([w, h, w, h])
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [float(v) for v in torch.tensor([x, y, w, h]) + jitter],
                        "score": float(torch.rand(1, generator=g))})
        results.append({"image_id": ann["image_id"], "category_id": gt["categories"][0]["id"],
                        "bbox": [x + w / 2, y, w, h], "score": float(torch.rand(1, generator=g))})
    a = evaluate_results(split["ann_file"], results, backend="pycocotools")
    b = evaluate_results(split["ann_file"], results, backend="faster_coco_eval")
    assert 0.05 < a["AP"] < 0.95  # a case where agreement means something
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert abs(a[key] - b[key]) <= 1e-6, key
    for name in a["per_class_AP"]:
        assert abs(a["per_class_AP"][name] - b["per_class_AP"][name]) <= 1e-6


def test_no_detections_is_zero_ap_not_a_crash(shapes_data):
    split = shapes_data["val"]
    m = evaluate_results(split["ann_file"], [], backend="pycocotools")
    assert m["AP"] == 0.0


def test_ground_truth_masks_score_segm_ap_one_on_coco_tiny(tmp_path):
    ann, images = coco_tiny_split("val")
    ds = CocoDataset(ann, images, with_masks=True)
    ev = COCOEvaluator(ann, ds.cat_ids, ds.class_names, iou_types=("bbox", "segm"), output_dir=tmp_path)
    for img_id in ds.ids:
        info = ds.coco.imgs[img_id]
        h, w = info["height"], info["width"]
        a = ds.load_annotations(img_id, h, w)
        inst = Instances((h, w), torch.from_numpy(a["boxes"]), torch.ones(len(a["boxes"])),
                         torch.from_numpy(a["labels"]), torch.from_numpy(a["masks"]).bool())
        ev.process(Batch(images=torch.zeros(1, 3, h, w, dtype=torch.uint8), image_ids=[img_id],
                         image_sizes=[(h, w)], orig_sizes=[(h, w)]), [inst])
    m = ev.evaluate()
    assert m["segm_AP"] == pytest.approx(1.0) and m["AP"] == pytest.approx(1.0)
    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)


def test_per_class_recall_is_the_share_of_objects_found(shapes_data):
    """A class given no detections has recall 0, one given every other object 1/2 of them (COCO's
    recall at IoU 0.5, 100 detections), the rest 1."""
    from detseg.evaluation.coco import evaluate_results
    split = shapes_data["val"]
    gt = json.load(open(split["ann_file"]))
    cats = sorted(c["id"] for c in gt["categories"])
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    dropped, halved = cats[0], cats[1]
    results, seen = [], 0
    for a in gt["annotations"]:
        if a["category_id"] == dropped or a.get("iscrowd"):
            continue
        if a["category_id"] == halved:
            seen += 1
            if seen % 2:
                continue
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0})
    stats = evaluate_results(split["ann_file"], results, "bbox", "pycocotools", names)
    total = sum(1 for a in gt["annotations"] if a["category_id"] == halved and not a.get("iscrowd"))
    recall = stats["per_class_recall"]
    assert recall[names[0]] == 0.0
    assert recall[names[1]] == pytest.approx((total - (total + 1) // 2) / total)
    assert all(recall[n] == pytest.approx(1.0) for n in names[2:])
