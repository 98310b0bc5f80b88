"""tools/explain.py: each view from a checkpoint, the table printed, and bad input in one line."""
import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.tools.test_export import make_checkpoint
from tools import explain as tool


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = tool.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    img = np.full((72, 96, 3), 90, np.uint8)
    cv2.circle(img, (30, 36), 16, (40, 40, 230), -1)
    path = root / "photo.png"
    cv2.imwrite(str(path), img)
    ann = {"images": [{"id": 7, "file_name": "photo.png", "height": 72, "width": 96}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [14, 20, 32, 32], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "circle"}]}
    (root / "ann.json").write_text(json.dumps(ann))
    return root


def test_every_view_of_a_checkpoint_writes_its_pictures(photo, tmp_path):
    """From a checkpoint's own config (the one an export is made from): Faster R-CNN for the
    region views, FCN-8s for the upsampling."""
    small = ["data.min_size_test=64", "data.max_size=96"]
    det = make_checkpoint(tmp_path / "det.pth", "faster_rcnn_resnet18_shapes", small)
    fcn = make_checkpoint(tmp_path / "fcn.pth", "fcn8s_resnet18_shapes", small)
    image = str(photo / "photo.png")
    code, out, err = run(["layers", "--weights", det, "--image", image, "--output", str(tmp_path / "layers")])
    assert code == 0, err
    assert "backbone.body.stages.c5 (Sequential)" in out and "Total params" in out
    assert json.loads(out.splitlines()[-1])["written"] == ["layers.txt", "layers.json"]
    rows = json.loads((tmp_path / "layers" / "layers.json").read_text())["rows"]
    assert any(r["name"] == "heads.det.proposals.conv" for r in rows)
    for view, weights, extra, stems in [
            ("features", det, ["--layer", "backbone.body.stages.c3"], ["features", "filters"]),
            ("saliency", det, [], ["saliency"]),
            ("proposals", det, ["--ann", str(photo / "ann.json")], ["proposals"]),
            ("pooling", det, ["--box", "14", "20", "46", "52"], ["pooling"]),
            ("upsampling", fcn, [], ["upsampling"])]:
        out_dir = tmp_path / view
        code, out, err = run([view, "--weights", weights, "--image", image, "--output", str(out_dir), *extra])
        if view == "saliency" and code == 2 and "detected nothing" in err:
            continue  # random weights may detect nothing above the head's threshold
        assert code == 0, (view, err)
        for stem in stems:
            picture = cv2.imread(str(out_dir / f"{stem}.png"))
            assert picture is not None and picture.std() > 5, (view, stem)
    # a second run into its own folder is allowed; into a folder of the user's files it is not
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run(["features", "--weights", det, "--image", image, "--output", str(mine)])
    assert code == 2 and "notes.txt" in err and (mine / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("argv,message", [
    (["features", "--image", "missing.jpg"], "missing.jpg"),
    (["features", "--layer", "backbone.stages.c9"], "did you mean"),
    (["windows"], "needs a SlidingWindowHead"),
    (["upsampling"], "needs a FCNHead"),
    (["saliency", "--target", "unicorn"], "unknown class 'unicorn'"),
    (["layers", "--max-depth", "-1"], "--max-depth"),
])
def test_bad_requests_end_in_one_clear_line(photo, tmp_path, argv, message):
    view, rest = argv[0], argv[1:]
    image = [] if "--image" in rest else ["--image", str(photo / "photo.png")]
    code, _, err = run([view, "--config", os.path.join(ROOT, "configs", "classify_resnet18_shapes.yaml"),
                        *image, *rest, "--output", str(tmp_path / "out"), "data.shapes.num_train=8",
                        "data.shapes.num_val=4"])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_an_exported_file_is_refused_with_the_way_on(photo, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07")  # not even a graph: refused for its kind before it is read
    code, _, err = run(["layers", "--weights", str(fake), "--image", str(photo / "photo.png"),
                        "--output", str(tmp_path / "o")])
    assert code == 2 and ("checkpoint (.pth)" in err or "model.onnx" in err), err
