"""Nothing the user made is ever overwritten: every tool pointed at the user's own files (its
inputs, a folder of their work, another run) refuses in one line naming the path and the way on,
and every file the user had is still there, byte for byte (checksums before and after).

Each case is (tool, arguments, expected status, text the error must contain); ``{name}`` in an
argument is a path of the ``home`` fixture (a user's folder of photos, a video, a checkpoint, a
config, a thesis, an earlier run, ...).
"""
import hashlib
import json
import os

import pytest
import torch

from tests.conftest import call_tool

TINY = ["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]", "data.min_size_test=64",
        "data.max_size=96", "solver.max_iter=1"]
DATA = ["data.train.ann_file={train_ann}", "data.train.image_dir={train_dir}",
        "data.val.ann_file={val_ann}", "data.val.image_dir={val_dir}"]


def _fill(arg: str, files: dict) -> str:
    for key, value in files.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def checksums(*roots: str) -> dict:
    """sha256 of every file under ``roots`` (what the user has), by path."""
    out = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    out[path] = "link:" + os.readlink(path)
                    continue
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory, shapes_data):
    """A user's folder: photos, a video, a checkpoint, a config, their thesis, earlier outputs."""
    import cv2
    import numpy as np

    from detseg.config import load_config, to_dict
    from detseg.engine.run_folder import claim_run_dir
    from detseg.modeling.model import build_model
    d = tmp_path_factory.mktemp("home")
    files = {"home": str(d)}
    files.update(train_ann=shapes_data["train"]["ann_file"], train_dir=shapes_data["train"]["image_dir"],
                 val_ann=shapes_data["val"]["ann_file"], val_dir=shapes_data["val"]["image_dir"])

    def put(name: str, content) -> str:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        files[name] = str(path)
        return str(path)

    rng = np.random.default_rng(0)
    for name in ("photos/a.png", "photos/b.png", "photos/a.jpg"):
        ok, enc = cv2.imencode(os.path.splitext(name)[1], rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        put(name, enc.tobytes())
    files["photos"] = str(d / "photos")
    put("videos/clip.mp4", b"\x00\x00\x00\x18ftypmp42 not really a video" * 10)
    files["videos"] = str(d / "videos")
    put("thesis/thesis.tex", "years of work")
    files["thesis"] = str(d / "thesis")
    put("notes.json", json.dumps({"my": "notes"}))
    put("model.onnx", b"my own onnx model, not a detseg export")
    put("exported.onnx", b"an exported model (eval refuses these before reading them)")
    put("my_config/config.yaml", "solver: {lr: 0.01}\n")
    files["my_config_dir"] = str(d / "my_config")
    cats = json.load(open(shapes_data["train"]["ann_file"]))["categories"]
    cfg = load_config(None, TINY)
    model = build_model(cfg, len(cats))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "class_names": [c["name"] for c in cats],
             "label_map": {"cat_ids": [c["id"] for c in cats], "class_names": [c["name"] for c in cats]}}
    (d / "runs" / "mine").mkdir(parents=True)
    torch.save(state, d / "runs" / "mine" / "best.pth")
    files["ckpt"] = str(d / "runs" / "mine" / "best.pth")
    files["ckpt_dir"] = str(d / "runs" / "mine")
    os.link(files["ckpt"], d / "ckpt_hardlink.onnx")
    files["ckpt_hardlink"] = str(d / "ckpt_hardlink.onnx")
    os.symlink(files["photos"], d / "photos_link")
    files["photos_link"] = str(d / "photos_link")
    torch.save({"backbone.body.conv1.weight": torch.zeros(1)}, d / "tv.pth")
    files["tv.pth"] = str(d / "tv.pth")
    put("broken.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}" + b"\x00" * 5)
    put("garbage.pt2", b"PK\x03\x04" + os.urandom(300))
    put("bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                     "solver: {x: *f}\n")
    # A dataset with a box outside its image, and a file of the user's where --fix writes its copy.
    train = json.load(open(shapes_data["train"]["ann_file"]))
    img = train["images"][0]
    ann = dict(next(a for a in train["annotations"] if a["image_id"] == img["id"]),
               bbox=[img["width"] - 5, 2, 40, 10])
    put("fixme/instances.json", json.dumps({"images": [img], "annotations": [ann], "categories": cats}))
    put("fixme/instances.fixed-clip.json", "my hand-fixed copy")
    # A crowd RLE whose counts are not numbers.
    val = json.load(open(shapes_data["val"]["ann_file"]))
    vimg = val["images"][0]
    crowd = {"id": 99999, "image_id": vimg["id"], "category_id": cats[0]["id"], "iscrowd": 1,
             "bbox": [1, 1, 10, 10], "area": 100,
             "segmentation": {"size": [vimg["height"], vimg["width"]], "counts": ["a", "b", "c"]}}
    put("crowd/val.json", json.dumps(dict(val, annotations=val["annotations"] + [crowd])))
    # An earlier run of another config, and a finished run of this config.
    filled = [_fill(a, files) for a in DATA]
    for name, extra in (("other_run", ["solver.lr=0.5"]), ("finished_run", [])):
        run_dir = str(d / "runs" / name)
        run_cfg = load_config(None, [*TINY, *filled, *extra, f"runtime.output_dir={run_dir}"])
        claimed = claim_run_dir(run_dir, run_cfg, resume=False, overwrite=False)
        import yaml
        (d / "runs" / name / "config.yaml").write_text(yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
        torch.save({"iteration": 1}, d / "runs" / name / "model_0000001.pth")
        claimed.list_files(complete=True)
        files[name] = run_dir
    # An earlier infer.py output, to which the user added a file.
    from tools import infer
    assert infer.main(["--weights", files["ckpt"], "--input", files["photos/a.png"],
                       "--output", str(d / "prev_infer")]) == 0
    put("prev_infer/my_notes.txt", "the user's own")
    files["prev_infer"] = str(d / "prev_infer")
    # An earlier make_shapes dataset, to which the user added a file.
    from tools import make_shapes
    assert make_shapes.main(["--out", str(d / "shapes"), "--num-train", "1", "--num-val", "1"]) == 0
    put("shapes/train/README.txt", "where I got these")
    files["shapes"] = str(d / "shapes")
    yield files


CASES = [
    # infer: outputs onto, into, around the inputs
    ("infer", ["--input", "{photos}", "--output", "{photos}"], 2, "is the input"),
    ("infer", ["--input", "{photos}", "--output", "{photos}/annotated"], 2, "lies inside the input folder"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{photos}"], 2, "holds the input"),
    ("infer", ["--input", "{photos}/*.png", "--output", "{photos}"], 2, "holds the input"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{photos_link}"], 2, "holds the input"),
    ("infer", ["--input", "{photos}", "--output", "{home}/x/../photos"], 2, "is the input"),
    ("infer", ["--input", "{videos/clip.mp4}", "--output", "{videos}"], 2, "holds the input"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{thesis}"], 2, "did not write (thesis.tex)"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{prev_infer}"], 2, "my_notes.txt"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{ckpt_dir}"], 2, "holds the input"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{home}"], 2, "holds the input"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{ckpt}"], 2, "is the input"),
    ("infer", ["--input", "{photos/a.png}", "--input", "{photos/b.png}"], 2, "--input was given twice"),
    ("infer", ["--input", "{photos/a.png}", "--output", "{home}/o1", "--output", "{home}/o2"], 2,
     "--output was given twice"),
    ("infer", ["--weights", "{garbage.pt2}", "--input", "{photos/a.png}"], 2, "torch.export cannot load it"),
    # export: the file it writes
    ("export", ["--format", "onnx", "--output", "{ckpt}"], 2, "is the input"),
    ("export", ["--output", "{ckpt_hardlink}"], 2, "is the input"),
    ("export", ["--output", "{model.onnx}"], 2, "is not a exported model this tool wrote"),
    ("export", ["--format", "onnx", "--output", "{thesis}"], 2, "is a folder"),
    ("export", ["--output", "{home}/fresh.onnx", "--opset", "99999"], 2, "--opset 99999"),
    ("export", ["--output", "{home}/a.onnx", "--output", "{home}/b.onnx"], 2, "given twice"),
    # rebalance: a model without a feature-vector classifier is refused before anything is written
    ("rebalance", ["--weights", "{ckpt}", "--output", "{home}/rb"], 2, "no classify, region or rcnn head"),
    # summary --json
    ("summary", ["--weights", "{ckpt}", "--json", "{ckpt}"], 2, "is the input"),
    ("summary", ["--config", "{my_config/config.yaml}", "--json", "{my_config/config.yaml}"], 2, "is the input"),
    ("summary", ["--weights", "{ckpt}", "--json", "{notes.json}"], 2, "not a summary JSON this tool wrote"),
    ("summary", ["--weights", "{ckpt}", "--json", "{thesis}"], 2, "is a folder"),
    # convert_weights --output
    ("convert_weights", ["--model", "faster_rcnn", "--input", "{tv.pth}", "--output", "{tv.pth}"], 2,
     "is the input"),
    ("convert_weights", ["--model", "faster_rcnn", "--input", "{tv.pth}", "--output", "{ckpt}"], 2,
     "not a converted checkpoint this tool wrote"),
    # proposals --out
    ("proposals", ["--ann-file", "{train_ann}", "--image-dir", "{train_dir}", "--out", "{train_ann}"], 2,
     "is the input"),
    ("proposals", ["--ann-file", "{train_ann}", "--image-dir", "{train_dir}", "--out", "{train_dir}/p.npz"],
     2, "lies inside the input folder"),
    ("proposals", ["--ann-file", "{train_ann}", "--image-dir", "{train_dir}", "--out",
                   "{thesis/thesis.tex}"], 2, "not a proposal cache this tool wrote"),
    # browse_data --output
    ("browse_data", [*DATA, "--output", "{train_dir}"], 2, "is the input"),
    ("browse_data", [*DATA, "--output", "{thesis}"], 2, "did not write (thesis.tex)"),
    ("browse_data", [*DATA, "--output", "{home}/shapes_out", "--num", "1", "--num", "2"], 2, "given twice"),
    # make_shapes --out
    ("make_shapes", ["--out", "{shapes}", "--num-train", "1", "--num-val", "1"], 1, "README.txt"),
    ("make_shapes", ["--out", "{thesis}"], 1, "refusing to replace it"),
    # check_data --fix: the copy's path holds the user's own file
    ("check_data", ["{fixme/instances.json}", "{train_dir}", "--fix", "clip"], 2, "not a fixed copy"),
    # eval
    ("eval", ["--weights", "{ckpt}", "--ann-file", "{val_ann}", "--image-dir", "{val_dir}", "--output",
              "{ckpt_dir}"], 2, "holds the input"),
    ("eval", ["--weights", "{ckpt}", "--ann-file", "{val_ann}", "--image-dir", "{val_dir}", "--output",
              "{val_dir}"], 2, "is the input"),
    ("eval", ["--weights", "{ckpt}", "--ann-file", "{val_ann}", "--image-dir", "{val_dir}", "--output",
              "{thesis}"], 2, "did not write"),
    ("eval", ["--weights", "{exported.onnx}"], 2, "evaluate the .pth checkpoint"),
    # train: run folders
    ("train", [*DATA, "--output-dir", "{other_run}"], 2, "a run of another config: solver.lr"),
    ("train", [*DATA, "--output-dir", "{other_run}", "--resume"], 2, "a run of another config"),
    ("train", [*DATA, "--output-dir", "{finished_run}"], 2, "--resume continues it"),
    ("train", [*DATA, "--output-dir", "{thesis}"], 2, "did not write (thesis.tex)"),
    ("train", [*DATA, "--output-dir", "{thesis}", "--resume"], 2, "did not write"),
    ("train", [*DATA, "--output-dir", "{train_dir}"], 2, "is the input"),
    ("train", [*DATA, "--output-dir", "{train_dir}/run"], 2, "lies inside the input folder"),
    ("train", [*DATA, "--output-dir", "{my_config_dir}", "--config", "{my_config/config.yaml}"], 2,
     "did not write (config.yaml)"),
    ("train", [*DATA, "--output-dir", "{ckpt_dir}", "--init-from", "{ckpt}"], 2, "holds the input"),
    ("train", [*DATA, "--output-dir", "{home}/r1", "--output-dir", "{home}/r2"], 2, "given twice"),
    # train: hostile values that used to end in a traceback
    ("train", ["--config", "{bomb.yaml}"], 2, "alias bomb"),
    ("train", ["solver.max_iter=" + "9" * 5000], 2, "solver.max_iter: a value YAML cannot read"),
    ("train", [*DATA, "model.backbone.weights={broken.safetensors}"], 1, "not a loadable weights file"),
]


@pytest.mark.parametrize("tool,args,status,text", CASES)
def test_nothing_the_user_made_is_lost(tool, args, status, text, home, shapes_data, tmp_path, capfd,
                                       monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here
    argv = [_fill(a, home) for a in args]
    if tool in ("infer", "export", "summary") and "--weights" not in argv and "--config" not in argv:
        argv = ["--weights", home["ckpt"], *argv]
    if tool == "eval" and "--weights" not in argv:
        argv = ["--weights", home["ckpt"], *argv]
    if tool == "train":
        argv = [*TINY, *argv, *([] if "--output-dir" in argv else ["--output-dir", str(tmp_path / "run")])]
    user = (home["home"], os.path.dirname(shapes_data["train"]["image_dir"]))
    before = checksums(*user)
    got = call_tool(tool, argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and 'File "' not in err, err[-3000:]
    assert got == status, (out + err)[-2000:]
    assert text in err, (out + err)[-2000:]
    errors = [line for line in err.splitlines() if "error:" in line or "error" in line.split(":")[0]]
    assert len(errors) == 1, err[-2000:]  # one line, not a dump
    assert checksums(*user) == before, "a file of the user's was changed, lost, or one was added"


def test_never_overwrite_cases_cover_every_writing_tool():
    assert len(CASES) >= 40
    assert {c[0] for c in CASES} >= {"train", "eval", "infer", "export", "summary", "convert_weights",
                                     "proposals", "browse_data", "make_shapes", "check_data"}


def test_an_output_folder_of_the_same_tool_is_reused_and_inputs_never_collide(home, tmp_path, monkeypatch):
    """A second infer.py into its own earlier output folder is allowed (that is a rerun); two
    inputs with one stem (a.png, a.jpg) both keep their picture (the second's was written over)."""
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    from detseg.outputs import MANIFEST, foreign_files
    from tools import infer
    out = str(tmp_path / "out")
    before = checksums(home["photos"])
    for _ in range(2):
        assert infer.main(["--weights", home["ckpt"], "--input", home["photos"], "--output", out]) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".jpg")) == ["a.jpg", "a_png.jpg", "b.jpg"]
    assert os.path.isfile(os.path.join(out, MANIFEST)) and foreign_files(out, "infer") == []
    # the user edits one of the outputs: it is theirs now, and the next run is refused
    with open(os.path.join(out, "results.json"), "a") as f:
        f.write(" ")
    assert foreign_files(out, "infer") == ["results.json"]
    assert infer.main(["--weights", home["ckpt"], "--input", home["photos"], "--output", out]) == 2
    assert infer.main(["--weights", home["ckpt"], "--input", home["photos"], "--output", out,
                       "--overwrite"]) == 0
    assert checksums(home["photos"]) == before


def test_train_resumes_its_own_run_and_overwrite_replaces_another(home, shapes_data, tmp_path, monkeypatch):
    """A finished run continues with --resume; --overwrite trains over another config's run (its
    checkpoints removed) but leaves the user's file in that folder alone."""
    import shutil
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    from tools import train
    data = [_fill(a, home) for a in DATA]
    run = str(tmp_path / "run")
    assert train.main([*TINY, *data, "--output-dir", run]) == 0
    assert train.main([*TINY, *data, "--output-dir", run]) == 2  # not without --resume
    assert train.main([*TINY, *data, "--output-dir", run, "--resume", "solver.max_iter=2"]) == 0
    assert os.path.isfile(os.path.join(run, "model_0000002.pth"))
    other = str(tmp_path / "other")
    shutil.copytree(home["other_run"], other)
    with open(os.path.join(other, "mine.txt"), "w") as f:
        f.write("keep me")
    assert train.main([*TINY, *data, "--output-dir", other]) == 2
    assert train.main([*TINY, *data, "--output-dir", other, "--overwrite"]) == 0
    assert open(os.path.join(other, "mine.txt")).read() == "keep me"
    # mine.txt is still not the run's: a later run without --overwrite is refused again
    assert train.main([*TINY, *data, "--output-dir", other, "--resume", "solver.max_iter=2"]) == 0
    from detseg.outputs import foreign_files
    assert foreign_files(other, "train") == ["mine.txt"]


def test_a_bad_crowd_rle_is_a_logged_repair_in_eval_and_the_doctor(home, tmp_path, capfd, caplog,
                                                                    monkeypatch):
    """A crowd RLE whose counts are not numbers: the doctor lists it, eval.py evaluates with the
    box in its place (pycocotools crashed on it) and says so."""
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    from tools import check_data, eval as eval_tool
    assert check_data.main([home["crowd/val.json"], home["val_dir"]]) == 1
    out, err = capfd.readouterr()
    assert "bad_rle" in out and "not all non-negative integers" in out and "Traceback" not in out + err
    import logging
    with caplog.at_level(logging.WARNING):
        assert eval_tool.main(["--weights", home["ckpt"], "--ann-file", home["crowd/val.json"],
                               "--image-dir", home["val_dir"], "--output", str(tmp_path / "ev")]) == 0
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    said = [r.getMessage() for r in caplog.records if "bad rle" in r.getMessage()]
    assert len(said) == 1 and "99999" in said[0], said
    assert os.path.isfile(tmp_path / "ev" / "metrics.json")


def test_an_image_whose_json_size_is_wrong_is_named_once_and_its_boxes_kept(shapes_data, tmp_path, caplog):
    """The JSON says the image is half as wide as the file: the box in the right half is kept (it
    was dropped as 'outside'), and the image is named once with both sizes."""
    import logging

    from detseg.data.coco import CocoDataset
    data = json.load(open(shapes_data["val"]["ann_file"]))
    img = data["images"][0]
    anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
    real_w = img["width"]
    anns[0] = dict(anns[0], bbox=[real_w * 0.6, 4.0, real_w * 0.2, 10.0], segmentation=[])
    data = dict(data, images=[dict(img, width=real_w // 2)], annotations=anns)
    path = tmp_path / "wrong_size.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="detseg.data.coco"):
        ds = CocoDataset(str(path), shapes_data["val"]["image_dir"])
        ds[0]
        ds[0]
    named = [r.getMessage() for r in caplog.records if "annotation file says" in r.getMessage()]
    assert len(named) == 1, named
    assert f"{real_w // 2}x" in named[0] and f"is {real_w}x" in named[0]
    assert ds.coco.imgs[img["id"]]["width"] == real_w
    assert len(ds.load_annotations(img["id"], img["height"], real_w)["boxes"]) == len(anns)
    assert not any("wholly outside" in r.getMessage() for r in caplog.records)


def test_the_kernel_cache_key_changes_with_the_cpu_instruction_set(monkeypatch, tmp_path):
    from detseg.ops import _ext
    avx2 = ["fpu", "sse2", "avx", "avx2", "fma"]
    assert _ext.isa_tag(avx2) != _ext.isa_tag(avx2 + ["avx512f", "avx512bw"])
    assert _ext.isa_tag(avx2 + ["amx_tile"]) != _ext.isa_tag(avx2)
    assert _ext.isa_tag(list(reversed(avx2))) == _ext.isa_tag(avx2)  # order does not matter
    assert _ext.isa_tag(avx2, "x86_64") != _ext.isa_tag(avx2, "aarch64")
    monkeypatch.setenv("DETSEG_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(_ext, "cpu_flags", lambda: avx2)
    a = _ext._build_dir()
    monkeypatch.setattr(_ext, "cpu_flags", lambda: avx2 + ["avx512f"])
    b = _ext._build_dir()
    assert a != b and os.path.dirname(a) == os.path.dirname(b)
    assert _ext.isa_tag(_ext.cpu_flags())  # this machine's flags read


def test_check_output_file_replaces_only_its_own_kind(tmp_path):
    from detseg.outputs import OutputRefused, check_output_file, json_written_by, stamp
    ours = tmp_path / "summary.json"
    ours.write_text(json.dumps(stamp({"params": 1}, "summary")))
    theirs = tmp_path / "notes.json"
    theirs.write_text(json.dumps({"written_by": "someone else"}))
    test = json_written_by("summary")
    assert check_output_file(str(ours), ours=test) == str(ours)
    with pytest.raises(OutputRefused, match="--overwrite"):
        check_output_file(str(theirs), ours=test)
    assert check_output_file(str(theirs), ours=test, overwrite=True) == str(theirs)
    with pytest.raises(OutputRefused, match="is the input"):  # not even with --overwrite
        check_output_file(str(ours), ours=test, overwrite=True, inputs=[str(ours)])


def test_a_killed_runs_files_are_its_own_and_a_finished_runs_are_listed(tmp_path):
    """The manifest: files a run wrote after its last listing count as its own while the run is
    unfinished (killed), not once it listed itself complete; a listed file changed since is not."""
    from detseg.outputs import OutputDir, claim_dir, foreign_files
    out = tmp_path / "out"
    run = claim_dir(str(out), "infer")
    (out / "a.jpg").write_bytes(b"1")  # written after the claim's listing, then the run is killed
    assert foreign_files(str(out), "infer") == []
    assert foreign_files(str(out), "eval") == ["a.jpg"]  # never another tool's
    run.list_files(complete=True)
    (out / "user.txt").write_text("mine")  # added after the run finished
    assert foreign_files(str(out), "infer") == ["user.txt"]
    (out / "a.jpg").write_bytes(b"12")  # the user edits an output
    assert foreign_files(str(out), "infer") == ["a.jpg", "user.txt"]
    assert isinstance(run, OutputDir)
