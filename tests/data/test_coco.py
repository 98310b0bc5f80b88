import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from detseg.data.coco import IGNORE, CocoDataset
from detseg.data.io import DataError
from tests.conftest import coco_tiny_split


def make_dataset(tmp_path, cat_ids=(3, 7, 42)):
    """Two 40x50 images: one with two objects and a crowd region, one with none."""
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(img_dir / name)
    crowd = np.zeros((40, 50), np.uint8, order="F")
    crowd[30:38, 0:10] = 1
    crowd_rle = mask_utils.encode(crowd)
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    data = {
        "images": [{"id": 10, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 11, "file_name": "b.png", "height": 40, "width": 50}],
        "categories": [{"id": c, "name": f"class{c}"} for c in cat_ids],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": cat_ids[2], "bbox": [5, 5, 10, 20], "iscrowd": 0,
             "area": 200, "segmentation": [[5, 5, 15, 5, 15, 25, 5, 25]]},
            {"id": 2, "image_id": 10, "category_id": cat_ids[0], "bbox": [20, 10, 20, 10], "iscrowd": 0,
             "area": 200, "segmentation": [[20, 10, 40, 10, 40, 20, 20, 20]]},
            {"id": 3, "image_id": 10, "category_id": cat_ids[1], "bbox": [0, 30, 10, 8], "iscrowd": 1,
             "area": 80, "segmentation": crowd_rle},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(ann), str(img_dir)


def test_category_ids_round_trip_and_boxes_are_xyxy(tmp_path):
    ann, img_dir = make_dataset(tmp_path)
    ds = CocoDataset(ann, img_dir)
    assert ds.cat_ids == [3, 7, 42] and ds.class_names == ["class3", "class7", "class42"]
    item = ds[0]
    assert item["labels"].tolist() == [2, 0]
    assert [ds.cat_ids[label] for label in item["labels"].tolist()] == [42, 3]
    np.testing.assert_allclose(item["boxes"].numpy(), [[5, 5, 15, 25], [20, 10, 40, 20]])
    assert "masks" not in item  # not decoded unless asked


def test_crowd_is_ignore_never_positive_and_empty_images_kept(tmp_path):
    ann, img_dir = make_dataset(tmp_path)
    ds = CocoDataset(ann, img_dir, with_semantic=True)
    assert len(ds) == 2
    item = ds[0]
    assert len(item["labels"]) == 2  # the crowd annotation is not a positive
    np.testing.assert_allclose(item["ignore_boxes"].numpy(), [[0, 30, 10, 38]])
    sem = item["semantic"].numpy()
    assert (sem[30:38, 0:10] == IGNORE).all()
    assert (sem[5:25, 5:15] == 3).all() and (sem[10:20, 20:40] == 1).all()
    assert sem[0, 49] == 0
    assert item["masks"].shape == (2, 40, 50) and item["masks"][0].sum() == 200
    negative = ds[1]
    assert negative["boxes"].shape == (0, 4) and (negative["semantic"] == 0).all()
    assert len(CocoDataset(ann, img_dir, keep_empty=False)) == 1


def test_bad_image_errors_or_is_skipped(tmp_path):
    ann, img_dir = make_dataset(tmp_path)
    (tmp_path / "img" / "b.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"b\.png.*image id 11"):
        CocoDataset(ann, img_dir)[1]
    ds = CocoDataset(ann, img_dir, on_bad_image="skip")
    assert ds[1] is None and ds.skipped == [str(tmp_path / "img" / "b.png")]


def test_cache_reads_each_file_once_and_a_writing_transform_cannot_change_it(tmp_path, monkeypatch):
    import detseg.data.io as io
    ann, img_dir = make_dataset(tmp_path)
    (tmp_path / "img" / "b.png").write_bytes(b"garbage")
    reads = []
    real_read = io.read_image
    monkeypatch.setattr(io, "read_image", lambda p: reads.append(p) or real_read(p))

    def scribble(sample):  # writes into the arrays it is given, as an in-place transform would
        sample["image"][:] = 0
        sample["masks"][:] = 0
        return sample

    plain = CocoDataset(ann, img_dir, with_semantic=True, on_bad_image="skip")[0]
    reads.clear()
    ds = CocoDataset(ann, img_dir, with_semantic=True, on_bad_image="skip", cache=True, transform=scribble)
    for _ in range(3):
        assert (ds[0]["image"] == 0).all() and ds[1] is None
    assert len(reads) == 2 and ds.skipped == [str(tmp_path / "img" / "b.png")]  # one read and one skip each
    ds.transform = None
    cached = ds[0]
    assert len(reads) == 2
    for key in ("image", "boxes", "labels", "masks", "semantic", "ignore_boxes"):
        assert torch.equal(cached[key], plain[key]), key


def test_malformed_annotation_file_is_named(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="x.json"):
        CocoDataset(str(bad), str(tmp_path))


def test_coco_tiny_loads_with_exact_id_mapping():
    ann, img_dir = coco_tiny_split("val")
    ds = CocoDataset(ann, img_dir, with_masks=True)
    raw = json.load(open(ann))
    assert len(ds) == 80
    assert ds.num_classes == 80 and sorted(ds.cat_ids) == ds.cat_ids
    assert ds.cat_ids == sorted(c["id"] for c in raw["categories"])
    crowd_images = {a["image_id"] for a in raw["annotations"] if a["iscrowd"]}
    assert crowd_images
    seen_labels = set()
    for i, img_id in enumerate(ds.ids):
        item = ds[i] if img_id in crowd_images or i < 10 else None
        if item is None:
            continue
        expected = [a["category_id"] for a in raw["annotations"]
                    if a["image_id"] == img_id and not a["iscrowd"] and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        assert [ds.cat_ids[label] for label in item["labels"].tolist()] == expected
        assert all(0 <= label < 80 for label in item["labels"].tolist())
        seen_labels.update(item["labels"].tolist())
        if img_id in crowd_images:
            assert len(item["ignore_boxes"]) > 0
    assert len(seen_labels) > 10
