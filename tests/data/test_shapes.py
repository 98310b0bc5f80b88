import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from detseg.data import shapes
from detseg.data.coco import CocoDataset
from tests.conftest import run_script


def _digest(root):
    """The dataset's bytes (the generator's manifest, which records when it listed them, aside)."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f == ".detseg-manifest.json":
                continue
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = run_script("tools/make_shapes.py", "--out", str(tmp_path / "a"), "--seed", "5",
                   "--num-train", "6", "--num-val", "2")
    assert a.returncode == 0, a.stderr
    shapes.generate(str(tmp_path / "b"), seed=5, num_train=6, num_val=2)
    shapes.generate(str(tmp_path / "c"), seed=6, num_train=6, num_val=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_shapes_is_a_valid_varied_coco_dataset(shapes_data):
    ds = CocoDataset(shapes_data["train"]["ann_file"], shapes_data["train"]["image_dir"],
                     with_semantic=True)
    assert ds.class_names == list(shapes.CLASSES)
    with open(shapes_data["train"]["ann_file"]) as f:
        data = json.load(f)
    assert {a["category_id"] for a in data["annotations"]} == set(shapes.CATEGORY_IDS)
    assert len({(i["height"], i["width"]) for i in data["images"]}) > 1  # varied sizes
    areas = [a["area"] for a in data["annotations"]]
    assert max(areas) > 8 * min(areas)  # varied object sizes
    # Semantic PNG written by the generator agrees with the one derived from polygons.
    import cv2
    item = ds[0]
    png = cv2.imread(os.path.join(os.path.dirname(shapes_data["train"]["image_dir"]),
                                  "semantic_train", "000001.png"), cv2.IMREAD_UNCHANGED)
    agree = (item["semantic"].numpy() == png).mean()
    assert agree > 0.97


def test_other_class_vocabularies_keep_each_shapes_category_id(tmp_path):
    """A second dataset sharing some classes with the default one (fine-tuning's test bed)."""
    from tools import make_shapes
    out = tmp_path / "other"
    assert make_shapes.main(["--out", str(out), "--classes", "star", "circle", "cross",
                             "--num-train", "6", "--num-val", "1"]) == 0
    with open(out / "annotations" / "instances_train.json") as f:
        data = json.load(f)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(11, "star"), (1, "circle"), (13, "cross")]
    ds = CocoDataset(str(out / "annotations" / "instances_train.json"), str(out / "train"))
    assert ds.class_names == ["circle", "star", "cross"]  # by category id, as for any COCO file
    assert {a["category_id"] for a in data["annotations"]} == {1, 11, 13}
    assert make_shapes.main(["--out", str(tmp_path / "x"), "--classes", "circle", "blob"]) == 1


def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys):
    from tools import make_shapes
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    assert make_shapes.main(["--out", str(mine), "--num-train", "1", "--num-val", "1"]) == 1
    assert "refusing to replace it" in capsys.readouterr().err
    assert os.listdir(mine) == ["chapter1.tex"]
    # An earlier shapes dataset is replaced, as before; one the user added a file to is not.
    ds = tmp_path / "ds"
    assert make_shapes.main(["--out", str(ds), "--num-train", "1", "--num-val", "1"]) == 0
    assert make_shapes.main(["--out", str(ds), "--num-train", "2", "--num-val", "1"]) == 0
    assert sorted(os.listdir(ds / "train")) == ["000001.png", "000002.png"]
    (ds / "val" / "extra.png").write_bytes(b"mine")
    assert make_shapes.main(["--out", str(ds), "--num-train", "1", "--num-val", "1"]) == 1
    assert "val/extra.png" in capsys.readouterr().err
    assert (ds / "val" / "extra.png").read_bytes() == b"mine"
    assert sorted(os.listdir(ds / "train")) == ["000001.png", "000002.png"]


def test_a_shapes_folder_from_before_the_manifest_is_judged_by_its_annotation_files(tmp_path):
    ds = str(tmp_path / "ds")
    shapes.generate(ds, seed=1, num_train=2, num_val=1)
    os.remove(os.path.join(ds, ".detseg-manifest.json"))
    assert shapes.not_generated(ds) == []
    with open(os.path.join(ds, "annotations", "mine.txt"), "w") as f:
        f.write("x")
    assert shapes.not_generated(ds) == [os.path.join("annotations", "mine.txt")]
    with pytest.raises(shapes.NotShapesFolder, match="mine.txt"):
        shapes.generate(ds, seed=1, num_train=1, num_val=1)


def test_the_cache_keeps_the_first_of_two_concurrent_builds(tmp_path, monkeypatch):
    """Two processes on a fresh cache: the one that renames its build into place first wins, the
    other keeps that folder (it may already be read) and drops its own build."""
    real, built = shapes.generate, []

    def racing(out_dir, *args, **kwargs):
        if not built:  # another process finishes first, while this one is still building
            built.append(real(os.path.join(str(tmp_path), shapes_name), *args, **kwargs))
            with open(built[0]["train"]["ann_file"], "a", encoding="utf-8") as f:
                f.write(" ")  # marks the winner's bytes
        return real(out_dir, *args, **kwargs)

    shapes_name = f"shapes_v{shapes.FORMAT_VERSION}_seed4_3_2"
    monkeypatch.setattr(shapes, "generate", racing)
    paths = shapes.ensure_shapes(seed=4, num_train=3, num_val=2, cache_dir=str(tmp_path))
    with open(paths["train"]["ann_file"], encoding="utf-8") as f:
        assert f.read().endswith(" "), "the first build was replaced"
    assert sorted(os.listdir(tmp_path)) == [shapes_name], "the losing build is removed"


def test_a_dataset_of_many_images_is_recognised_and_replaced(tmp_path):
    """The marker of a shapes dataset is found however long its annotation file is (it was looked
    for in the first 4 KB, which a few images' polygons fill)."""
    ds = str(tmp_path / "ds")
    paths = shapes.generate(ds, seed=1, num_train=12, num_val=1)
    assert os.path.getsize(paths["train"]["ann_file"]) > 4096 * 4
    assert shapes.is_shapes_folder(ds)
    shapes.generate(ds, seed=2, num_train=1, num_val=1)
    assert len(os.listdir(os.path.join(ds, "train"))) == 1


def test_long_tailed_train_split_and_balanced_val(tmp_path):
    from detseg.data.class_balance import class_histogram, imbalance_ratio
    from detseg.data.shapes import long_tail_weights
    w = long_tail_weights(8, 100.0)
    assert w[0] / w[-1] == pytest.approx(100.0) and (np.diff(w) < 0).all() and w.sum() == pytest.approx(1)
    assert long_tail_weights(8, 1.0) is None
    classes = ["circle", "rectangle", "triangle", "hexagon", "star", "ellipse", "cross", "pentagon"]
    paths = shapes.ensure_shapes(seed=2, num_train=120, num_val=40, cache_dir=str(tmp_path), classes=classes,
                                 imbalance=50.0)
    assert "longtail50" in paths["train"]["ann_file"]
    train, val = class_histogram(paths["train"]["ann_file"]), class_histogram(paths["val"]["ann_file"])
    counts = [train[c] for c in classes]
    assert counts[0] > 5 * counts[-1] and counts[0] == max(counts)  # the head class leads by far
    assert imbalance_ratio(train) > 10 and imbalance_ratio(val) < 4
    # the same seed without imbalance draws the default data, byte for byte as before
    balanced = shapes.ensure_shapes(seed=2, num_train=3, num_val=1, cache_dir=str(tmp_path))
    image, _, _ = shapes.render_image(2, "train", 0)
    assert (cv2.imread(os.path.join(balanced["train"]["image_dir"], "000001.png"))[..., ::-1] == image).all()


def test_doctor_prints_class_histogram_and_advice(tmp_path, capsys):
    from tools import check_data, make_shapes
    out = str(tmp_path / "lt")
    assert make_shapes.main(["--out", out, "--num-train", "120", "--num-val", "4", "--imbalance", "100",
                             "--classes", "circle", "rectangle", "triangle", "hexagon", "star"]) == 0
    capsys.readouterr()
    assert check_data.main([f"{out}/annotations/instances_train.json", f"{out}/train"]) == 0
    text = capsys.readouterr().out
    assert "imbalance ratio" in text and "try data.sampler=repeat_factor" in text
    assert text.index("circle") < text.index("star")  # most frequent first
    assert make_shapes.main(["--out", str(tmp_path / "x"), "--imbalance", "0.5"]) == 2
