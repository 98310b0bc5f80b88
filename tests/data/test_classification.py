"""Classification data: folders per class, COCO crops, the built-in shapes split and digits."""
import os

import cv2
import numpy as np
import pytest

from detseg.config import load_config
from detseg.data.build import build_datasets, build_train_loader, resolve_splits
from detseg.data.classification import ClassificationDataset, ClassifyTransform, coco_crops, scan_folder
from detseg.data.io import DataError


def _folder(root, counts: dict, size=(40, 48)):
    for cls, n in counts.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            img = np.full((*size, 3), 40 * i % 255, np.uint8)
            cv2.imwrite(str(root / cls / f"{i}.png"), img)
    return str(root)


def test_folder_layout_follows_imagefolder(tmp_path):
    root = _folder(tmp_path / "train", {"zebra": 2, "cat": 3})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    items, names, counts = scan_folder(root)
    assert names == ["cat", "zebra"] and counts == {"cat": 3, "zebra": 2}  # sorted, as ImageFolder
    assert [label for _, label, _ in items] == [0, 0, 0, 1, 1]
    # a val folder reads the train classes: its labels mean the same classes, a missing class is fine
    val = _folder(tmp_path / "val", {"zebra": 1})
    items, names, _ = scan_folder(val, ["cat", "zebra"])
    assert names == ["cat", "zebra"] and items[0][1] == 1


def test_folder_problems_are_one_line_each(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_folder(str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_folder(str(tmp_path / "flat"))
    root = _folder(tmp_path / "train", {"cat": 2})
    os.makedirs(tmp_path / "train" / "dog")
    with pytest.raises(DataError, match="dog.*no image"):
        scan_folder(root)
    val = _folder(tmp_path / "val", {"cat": 1, "horse": 1})
    with pytest.raises(DataError, match="horse.*not classes of the training"):
        scan_folder(val, ["cat", "dog"])


def test_a_corrupt_image_is_named_or_skipped(tmp_path):
    root = _folder(tmp_path / "train", {"cat": 2})
    (tmp_path / "train" / "cat" / "9.png").write_bytes(b"not a png")
    items, names, _ = scan_folder(root)
    t = ClassifyTransform(32, train=False)
    ds = ClassificationDataset(items, names, source=root, transform=t)
    with pytest.raises(DataError, match="9.png"):
        [ds[i] for i in range(len(ds))]
    ds = ClassificationDataset(items, names, source=root, transform=t, on_bad_image="skip")
    got = [ds[i] for i in range(len(ds))]
    assert sum(g is None for g in got) == 1 and len(ds.skipped) == 1
    assert got[0]["image"].shape == (3, 32, 32) and got[0]["label"] == 0


def test_coco_crops_cut_each_object_with_context(shapes_data):
    split = shapes_data["train"]
    items, names, cat_ids = coco_crops(split["ann_file"], split["image_dir"], context=0.25)
    import json
    anns = [a for a in json.load(open(split["ann_file"]))["annotations"] if min(a["bbox"][2:]) >= 4]
    assert len(items) == len(anns) and names == ["circle", "rectangle", "triangle", "hexagon"]
    path, label, box = items[0]
    x, y, w, h = anns[0]["bbox"]
    assert box == pytest.approx((x - w / 4, y - h / 4, x + w + w / 4, y + h + h / 4))
    assert cat_ids[label] == anns[0]["category_id"]
    ds = ClassificationDataset(items, names, source=split["ann_file"], cat_ids=cat_ids)
    crop = ds[0]["image"]
    img_h, img_w = cv2.imread(path).shape[:2]
    expect_w = min(img_w, int(np.ceil(box[2]))) - max(0, int(np.floor(box[0])))
    assert crop.shape[2] == expect_w  # clipped to the image


def test_train_augmentation_is_seeded():
    img = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    t = ClassifyTransform(32, train=True, min_scale=0.3)
    t.reseed(5)
    a = t({"image": img})["image"]
    t.reseed(5)
    b = t({"image": img})["image"]
    t.reseed(6)
    c = t({"image": img})["image"]
    assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_builtin_digits_and_shapes_through_the_config(tmp_path):
    cache = str(tmp_path / "cache")
    cfg = load_config("configs/classify_lenet5_digits.yaml", [f"data.shapes.cache_dir={cache}"])
    splits = resolve_splits(cfg)
    ds = build_datasets(cfg, splits)
    assert len(ds["train"]) == 1347 and len(ds["val"]) == 450  # every fourth scan is val
    assert ds["train"].class_names == [str(d) for d in range(10)]
    assert sum(ds["val"].class_counts()) == 450 and min(ds["val"].class_counts()) >= 35
    batch = next(iter(build_train_loader(cfg, ds["train"])))
    assert batch.images.shape == (64, 3, 32, 32) and batch.labels.shape == (64,)
    cfg = load_config("configs/classify_resnet18_shapes.yaml",
                      [f"data.shapes.cache_dir={cache}", "data.shapes.num_train=8", "data.shapes.num_val=4"])
    ds = build_datasets(cfg, resolve_splits(cfg))
    assert ds["train"].class_counts() == [2, 2, 2, 2] and ds["val"].num_classes == 4
    item = ds["val"][0]
    # rendered at 64 px, read at the recipe's 32
    assert item["image"].shape == (3, 32, 32) and item["orig_size"] == (64, 64)


def test_the_shapes_classification_split_takes_the_long_tail(tmp_path):
    """data.shapes.imbalance long-tails the train split of the classification shapes as it does
    the detection split's; val stays balanced."""
    cfg = load_config("configs/classify_resnet18_shapes.yaml",
                      [f"data.shapes.cache_dir={tmp_path}", "data.shapes.num_train=120", "data.shapes.num_val=8",
                       "data.shapes.imbalance=20"])
    ds = build_datasets(cfg, resolve_splits(cfg))
    n = dict(zip(ds["train"].class_names, ds["train"].class_counts()))  # folder names, sorted
    assert sum(n.values()) == 120
    # the tail follows the drawing order (circle, rectangle, triangle, hexagon), not the folders'
    assert n["circle"] > n["rectangle"] > n["triangle"] > n["hexagon"] > 0 and n["circle"] > 10 * n["hexagon"]
    assert ds["val"].class_counts() == [2, 2, 2, 2]
    # a tail too steep for its images still holds every class (an empty class folder is refused)
    cfg = load_config("configs/classify_resnet18_shapes.yaml",
                      [f"data.shapes.cache_dir={tmp_path}", "data.shapes.num_train=8", "data.shapes.num_val=4",
                       "data.shapes.imbalance=1000"])
    assert min(build_datasets(cfg, resolve_splits(cfg))["train"].class_counts()) >= 1


def test_a_size_that_is_not_a_multiple_of_32_is_refused(tmp_path):
    root = _folder(tmp_path / "train", {"cat": 1, "dog": 1})
    cfg = load_config(None, ["model.heads={cls: {type: classify}}", f"data.train.image_dir={root}",
                             "data.classify.size=48"])
    with pytest.raises(DataError, match="multiple of 32"):
        build_datasets(cfg, resolve_splits(cfg))


def test_the_doctor_lists_every_folder_problem_and_the_counts(tmp_path, capsys):
    from tests.conftest import call_tool
    root = _folder(tmp_path / "train", {"cat": 3, "dog": 1})
    os.makedirs(tmp_path / "train" / "emu")
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "train" / "dog" / "readme.md").write_text("x")
    assert call_tool("check_data", [root]) == 1
    out = capsys.readouterr().out
    for kind in ("empty_class", "unreadable_image", "not_an_image", "broken.jpg"):
        assert kind in out
    assert "cat         3" in out and "largest / smallest class 3.0" in out
    clean = _folder(tmp_path / "clean", {"a": 2, "b": 2})
    assert call_tool("check_data", [clean]) == 0
