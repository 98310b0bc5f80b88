"""Bad input, tried as a new user would, across the tools: each case must end in its exit status
and one clear line naming the problem; never a traceback, never exit 0 with nothing done.

Each case is (tool, arguments, expected status, text the error must contain). ``{name}`` in an
argument is a file of the ``bad`` fixture; ``{ckpt}`` a valid checkpoint, ``{train_ann}`` etc.
the shapes dataset's files.
"""
import json
import os
import shutil

import pytest
import torch

from tests.conftest import call_tool

TINY = ["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]", "data.min_size_test=64",
        "data.max_size=96", "solver.max_iter=1"]
DATA = ["data.train.ann_file={train_ann}", "data.train.image_dir={train_dir}"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _coco(images, annotations, categories):
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture(scope="module")
def bad(tmp_path_factory, shapes_data):
    """Files a user might hand the tools by mistake."""
    from detseg.config import load_config, to_dict
    from detseg.modeling.model import build_model
    d = tmp_path_factory.mktemp("bad")
    files = {}

    def put(name, content):
        path = d / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else json.dumps(content))
        files[name] = str(path)

    train = json.load(open(shapes_data["train"]["ann_file"]))
    img = train["images"][0]
    cats = train["categories"]
    ann = next(a for a in train["annotations"] if a["image_id"] == img["id"])
    put("not_json.json", "{this is not json")
    put("no_categories.json", {"images": train["images"], "annotations": train["annotations"]})
    put("empty_categories.json", _coco(train["images"], [], []))
    put("empty.json", _coco([], [], cats))
    put("dup_images.json", _coco([img, img], [ann], cats))
    put("no_annotations.json", _coco([img], [], cats))
    put("list.json", [1, 2, 3])
    put("unknown_category.json", _coco([img], [dict(ann, category_id=999)], cats))
    put("text.pth", "not a checkpoint at all")
    put("garbage.mp4", b"\x00\x01 not a video" * 100)
    put("a_file", "x")
    os.makedirs(d / "trunc_images")
    import cv2
    import numpy as np
    ok, enc = cv2.imencode(".jpg", np.full((64, 64, 3), 127, np.uint8))
    (d / "trunc_images" / "a.jpg").write_bytes(enc.tobytes()[: len(enc) // 2])
    put("truncated.json", _coco([{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64}],
                                [{"id": 1, "image_id": 1, "category_id": cats[0]["id"],
                                  "bbox": [1, 1, 10, 10], "iscrowd": 0, "area": 100}], cats))
    files["trunc_images"] = str(d / "trunc_images")
    os.makedirs(d / "user_folder")
    (d / "user_folder" / "thesis.tex").write_text("years of work")
    files["user_folder"] = str(d / "user_folder")
    files["folder"] = str(d)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    torch.save({"model": {"w": Payload()}}, d / "evil.pth")
    files["evil.pth"] = str(d / "evil.pth")
    cfg = load_config(None, TINY)
    model = build_model(cfg, 4)
    state = {"model": model.state_dict(), "config": to_dict(cfg), "class_names": [c["name"] for c in cats],
             "label_map": {"cat_ids": [c["id"] for c in cats], "class_names": [c["name"] for c in cats]}}
    torch.save(state, d / "ckpt.pth")
    files["ckpt"] = str(d / "ckpt.pth")
    files.update(train_ann=shapes_data["train"]["ann_file"], train_dir=shapes_data["train"]["image_dir"],
                 val_ann=shapes_data["val"]["ann_file"], val_dir=shapes_data["val"]["image_dir"],
                 image=os.path.join(shapes_data["val"]["image_dir"], "000001.png"))
    # A run folder of this config (its config.yaml, as train writes it) whose checkpoint is of
    # another architecture, for --resume.
    import yaml
    os.makedirs(d / "other_run")
    run_cfg = load_config(None, [*TINY, *(_fill(a, files) for a in DATA)])
    (d / "other_run" / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
    torch.save({"model": {"w": torch.zeros(3)}, "iteration": 1}, d / "other_run" / "model_0000001.pth")
    files["other_run"] = str(d / "other_run")
    yield files
    assert not (d / "PWNED").exists(), "a pickled payload ran"


CASES = [
    # train: config values, checked at load
    ("train", ["solver.max_itr=3"], 2, "unknown config key 'solver.max_itr'"),
    ("train", ["solver.lr=-0.01"], 2, "'solver.lr'"),
    ("train", ["solver.lr=nan"], 2, "'solver.lr'"),
    ("train", ["data.batch_size=0"], 2, "'data.batch_size'"),
    ("train", ["data.num_workers=-1"], 2, "'data.num_workers'"),
    ("train", ["solver.eval_period=0"], 2, "'solver.eval_period'"),
    ("train", ["solver.max_iter=0"], 2, "'solver.max_iter'"),
    ("train", ["data.min_size_test=0"], 2, "'data.min_size_test'"),
    ("train", ["model.heads={a: {type: yolo}}"], 2, "unknown head type 'yolo'"),
    ("train", ["model.heads={}"], 2, "at least one head"),
    ("train", ["solver.freeze.iters=-1"], 2, "'solver.freeze.iters'"),
    ("train", ["--config", "{folder}/missing.yaml"], 2, "config file not found"),
    ("train", ["--config", "{not_json.json}"], 2, "not valid YAML"),
    # train: devices and outputs
    ("train", ["--device", "tpu"], 2, "unknown device 'tpu'"),
    pytest.param("train", ["--device", "cuda"], 2, "no GPU is available", marks=NO_GPU),
    ("train", ["--output-dir", "/proc/detseg_run"], 2, "cannot write the output here"),
    ("train", ["--output-dir", "{a_file}"], 2, "is not a folder"),
    ("train", ["--output-dir", "{a_file}/run"], 2, "cannot write the output here"),
    # train: data
    ("train", ["data.train.ann_file={folder}/missing.json", "data.train.image_dir={folder}"], 1,
     "annotation file not found"),
    ("train", ["data.train.ann_file={no_categories.json}", "data.train.image_dir={train_dir}"], 1,
     "'categories' missing"),
    ("train", ["data.train.ann_file={empty_categories.json}", "data.train.image_dir={train_dir}"], 1,
     "'categories' is empty"),
    ("train", ["data.train.ann_file={empty.json}", "data.train.image_dir={train_dir}"], 1,
     "'images' is empty"),
    ("train", ["data.train.ann_file={dup_images.json}", "data.train.image_dir={train_dir}"], 1,
     "image id appears twice"),
    ("train", ["data.train.ann_file={no_annotations.json}", "data.train.image_dir={train_dir}"], 1,
     "no usable (non-crowd, boxed) annotation"),
    ("train", ["data.train.ann_file={unknown_category.json}", "data.train.image_dir={train_dir}"], 1,
     "category_id 999 is not declared"),
    ("train", ["data.train.ann_file={list.json}", "data.train.image_dir={train_dir}"], 1,
     "top level is not an object"),
    ("train", ["data.shapes.classes=[blob]"], 1, "data.shapes.classes"),
    # train: weights, checkpoints
    ("train", [*DATA, "model.backbone.weights={text.pth}"], 1, "not a loadable weights file"),
    ("train", [*DATA, "model.backbone.weights={folder}/nope.pth"], 1, "weights file not found"),
    ("train", [*DATA, "--init-from", "{folder}/nope.pth"], 2, "model.init_from"),
    ("train", [*DATA, "--init-from", "{ckpt}", "--resume"], 2, "give one"),
    ("train", [*DATA, "--init-from", "{evil.pth}"], 1, "refused"),
    ("train", [*DATA, "--init-from", "{text.pth}"], 1, "not a readable checkpoint"),
    ("train", [*DATA, "--resume", "--output-dir", "{other_run}"], 1, "another model than this config builds"),
    ("train", [*DATA, "--eval-only", "--weights", "{evil.pth}"], 2, "refused"),  # tools/eval.py's code
    # eval
    ("eval", ["--weights", "{folder}/nope.pth"], 2, "checkpoint not found"),
    ("eval", ["--weights", "{text.pth}"], 2, "not a readable checkpoint"),
    ("eval", ["--weights", "{evil.pth}"], 2, "refused"),
    ("eval", ["--weights", "{ckpt}", "--ann-file", "{folder}", "--image-dir", "{val_dir}"], 2,
     "is a folder, not an annotation file"),
    ("eval", ["--weights", "{ckpt}", "--device", "tpu"], 2, "unknown device"),
    ("eval", ["--weights", "{ckpt}", "--ann-file", "{val_ann}", "--image-dir", "{val_dir}",
              "--output", "/proc/detseg_eval"], 2, "cannot write the output here"),
    # infer
    ("infer", ["--weights", "{ckpt}", "--input", "{image}", "--score-threshold", "2"], 2, "score threshold"),
    ("infer", ["--weights", "{ckpt}", "--input", "{image}", "--score-threshold", "nan"], 2,
     "score threshold"),
    ("infer", ["--weights", "{ckpt}", "--input", "{folder}/nope.jpg"], 2, "nope.jpg"),
    ("infer", ["--weights", "{ckpt}", "--input", "{image}", "--batch-size", "0"], 2, "--batch-size"),
    ("infer", ["--weights", "{ckpt}", "--input", "{image}", "--output", "{a_file}"], 2, "is not a folder"),
    ("infer", ["--weights", "{ckpt}", "--input", "{garbage.mp4}"], 1, "garbage.mp4"),
    ("infer", ["--weights", "{evil.pth}", "--input", "{image}"], 2, "refused"),
    pytest.param("infer", ["--weights", "{ckpt}", "--input", "{image}", "--device", "cuda"], 2,
                 "no GPU is available", marks=NO_GPU),
    # check_data: problems are a table on stdout and exit 1
    ("check_data", ["{folder}", "{train_dir}"], 1, "is a folder, not an annotation file"),
    ("check_data", ["{empty.json}", "{train_dir}"], 1, "no_images"),
    ("check_data", ["{empty_categories.json}", "{train_dir}"], 1, "no_categories"),
    ("check_data", ["{truncated.json}", "{trunc_images}"], 1, "unreadable_image"),
    ("check_data", ["{folder}/missing.json", "{train_dir}"], 1, "missing_file"),
    # make_shapes
    ("make_shapes", ["--out", "{user_folder}"], 1, "refusing to replace it"),
    ("make_shapes", ["--out", "{folder}/x", "--num-train", "-1"], 2, "--num-train"),
    ("make_shapes", ["--out", "{folder}/x", "--classes", "blob"], 1, "blob"),
    ("make_shapes", ["--out", "{a_file}/x", "--num-train", "1", "--num-val", "1"], 1, "error"),
    # proposals
    ("proposals", ["--ann-file", "{folder}/missing.json", "--image-dir", "{folder}"], 1, "not found"),
    ("proposals", ["--ann-file", "{train_ann}"], 2, "--ann-file needs --image-dir"),
    ("proposals", ["--ann-file", "{train_ann}", "--image-dir", "{train_dir}", "--workers", "-1"], 2,
     "--workers"),
    # convert_weights
    ("convert_weights", ["--model", "faster_rcnn", "--input", "{folder}/nope.pth"], 1, "not found"),
    ("convert_weights", ["--model", "faster_rcnn", "--input", "{ckpt}"], 1, "converter does not know"),
    ("convert_weights", ["--model", "faster_rcnn", "--input", "{evil.pth}"], 1,
     "not a loadable weights file"),
    ("convert_weights", ["--model", "faster_rcnn", "--input", "GARBAGE_ENUM"], 1,
     "neither a file nor a member"),
]


def _fill(arg, files):
    for key, value in files.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


@pytest.mark.parametrize("tool,args,status,text", CASES)
def test_hostile_input_ends_in_one_clear_line(tool, args, status, text, bad, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here
    argv = [_fill(a, bad) for a in args]
    if tool == "train" and "--output-dir" not in argv:
        argv += ["--output-dir", str(tmp_path / "run")]
    if tool == "train":
        argv = [*TINY, *argv]
    got = call_tool(tool, argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert got == status, (out + err)[-2000:]
    where = out if tool == "check_data" else err
    assert text in where, (out + err)[-2000:]
    if tool != "check_data":
        errors = [line for line in err.splitlines() if "error" in line.split(":")[0]]
        assert len(errors) == 1, err[-2000:]  # one line, not a dump
    assert not os.path.exists(os.path.join(str(tmp_path), "PWNED"))


def test_hostile_cases_cover_every_tool():
    assert len(CASES) >= 40
    assert {(c.values if hasattr(c, "values") else c)[0] for c in CASES} == {
        "train", "eval", "infer", "check_data", "make_shapes", "proposals", "convert_weights"}


def test_user_folder_survives(bad):
    assert os.listdir(bad["user_folder"]) == ["thesis.tex"]
    shutil.rmtree(os.path.join(bad["folder"], "x"), ignore_errors=True)
