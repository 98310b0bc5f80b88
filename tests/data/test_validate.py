import json
import os

import numpy as np
from PIL import Image

from detseg.data.validate import check_dataset
from tests.conftest import run_script


def broken_dataset(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i in range(1, 5):
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img_dir / f"{i}.png")
    (img_dir / "corrupt.png").write_bytes(b"not a png")
    ok = {"iscrowd": 0, "area": 10, "segmentation": [[1, 1, 5, 1, 5, 5]]}
    data = {
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "images": [
            {"id": 1, "file_name": "1.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "2.png", "height": 40, "width": 60},
            {"id": 3, "file_name": "3.png", "height": 99, "width": 60},       # size mismatch
            {"id": 4, "file_name": "missing.png", "height": 40, "width": 60},  # missing file
            {"id": 5, "file_name": "corrupt.png", "height": 40, "width": 60},  # unreadable
            {"id": 2, "file_name": "4.png", "height": 40, "width": 60},        # duplicate image id
        ],
        "annotations": [
            {**ok, "id": 100, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},  # fine
            {**ok, "id": 101, "image_id": 1, "category_id": 1, "bbox": [50, 30, 20, 20]},  # outside
            {**ok, "id": 102, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4]},  # empty
            {**ok, "id": 103, "image_id": 1, "category_id": 1, "bbox": [5, float("nan"), 3, 4]},  # NaN
            {**ok, "id": 104, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5],
             "segmentation": [[1, 1, 5, 1]]},  # 2-point polygon
            {**ok, "id": 105, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5],
             "segmentation": [[1, 1, 5, 1, 5, 5, 1]]},  # odd coordinates
            {**ok, "id": 106, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1,
             "segmentation": {"size": [10, 10], "counts": [100]}},  # RLE of the wrong size
            {**ok, "id": 107, "image_id": 2, "category_id": 77, "bbox": [1, 1, 5, 5]},  # unknown cat
            {**ok, "id": 100, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]},  # dup ann id
            {**ok, "id": 108, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no image
            {**ok, "id": 109, "image_id": 2, "category_id": 2, "bbox": [2, 2, 8, 8]},  # fine
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(ann), str(img_dir)


EXPECTED = {
    ("size_mismatch", 3, None), ("missing_image", 4, None), ("unreadable_image", 5, None),
    ("duplicate_image_id", 2, None), ("box_outside_image", 1, 101), ("empty_box", 1, 102),
    ("nan_box", 1, 103), ("polygon_too_few_points", 2, 104), ("polygon_odd_coords", 2, 105),
    ("rle_size_mismatch", 2, 106), ("unknown_category", 2, 107), ("duplicate_annotation_id", 2, 100),
    ("unknown_image", 999, 108),
}


def test_doctor_reports_every_defect_by_id(tmp_path):
    ann, img_dir = broken_dataset(tmp_path)
    found = {(p.kind, p.image_id, p.ann_id) for p in check_dataset(ann, img_dir)}
    assert found == EXPECTED


def test_check_data_script_exit_status_and_fix(tmp_path, capsys):
    from tools import check_data

    def run(*args):
        code = check_data.main(list(args))
        return code, capsys.readouterr().out

    ann, img_dir = broken_dataset(tmp_path)
    before = open(ann).read()
    code, out = run(ann, img_dir)
    assert code == 1
    for kind, _, ann_id in EXPECTED:
        assert kind in out
    assert "13 problem(s)" in out

    code, out = run(ann, img_dir, "--fix", "drop")
    assert code == 1 and "wrote" in out
    assert open(ann).read() == before  # the original is never modified
    fixed = str(tmp_path / "ann.fixed-drop.json")
    code, out = run(fixed, img_dir)
    assert code == 0, out
    kept = json.load(open(fixed))
    assert sorted(a["id"] for a in kept["annotations"]) == [100, 109]

    run(ann, img_dir, "--fix", "clip")
    clipped = json.load(open(tmp_path / "ann.fixed-clip.json"))
    box = next(a["bbox"] for a in clipped["annotations"] if a["id"] == 101)
    assert box == [50, 30, 10, 10]
    assert next(i for i in clipped["images"] if i["id"] == 3)["height"] == 40
    assert run(str(tmp_path / "ann.fixed-clip.json"), img_dir)[0] == 0
    assert os.path.exists(ann)
    # As a user runs it, once: the exit status comes through the process.
    assert run_script("tools/check_data.py", ann, img_dir).returncode == 1
