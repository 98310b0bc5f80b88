"""Every head exported to ONNX (run by ONNX Runtime) and torch.export (.pt2) gives the eager
model's results on two coco_tiny photos (synthetic stand-ins without ../shared), and
tools/export.py, tools/infer.py and load_model take the files.

The models are randomly initialised: their near-uniform scores make ties and many detections,
a harder case for parity than a trained model's few confident ones.
"""
import json
import os

import numpy as np
import pytest
import torch

from detseg import load_model
from detseg.config import load_config, to_dict
from detseg.engine.checkpoint import CheckpointError
from detseg.modeling.model import build_model
from tests.conftest import COCO_TINY, ROOT

ort = pytest.importorskip("onnxruntime")  # the test command installs the [export] extra
onnx = pytest.importorskip("onnx")

from detseg.export import Traced  # noqa: E402
from detseg.export.parity import (BOX_TOL, SCORE_TOL, compare_predictions, fixed_proposals,  # noqa: E402
                                  synthetic_photo)
from detseg.export.runtime import ExportedPredictor  # noqa: E402

CLASSES = ["circle", "rectangle", "triangle"]
# head -> (config, overrides, ONNX operators the graph must hold)
HEADS = {
    "fcn8s": ("fcn8s_resnet18_shapes", [], {"ArgMax", "ConvTranspose"}),
    "fcn16s": ("fcn8s_resnet18_shapes", ["model.heads.seg.variant=16s"], {"ArgMax", "ConvTranspose"}),
    "fcn32s": ("fcn8s_resnet18_shapes", ["model.heads.seg.variant=32s"], {"ArgMax", "ConvTranspose"}),
    # four window shapes (two sizes, two ratios) instead of the recipe's nine: the same graph
    # pieces, a third of the export time
    "sliding_window": ("sliding_window_resnet18_shapes", ["model.heads.det.window_sizes=[16,32]",
                                                          "model.heads.det.aspect_ratios=[0.5,1.0]"],
                       {"NonMaxSuppression"}),
    # 300 proposals, not 2000: a sixth of the warped crops, and still a cap above the trace's 24
    # example proposals and below what selective search finds in a photo
    "rcnn": ("rcnn_resnet18_shapes", ["model.heads.det.proposals.max_per_image=300"], {"NonMaxSuppression"}),
    # SPPNet's pyramid; Fast R-CNN's single-level RoI pooling is the same op with one level, here
    # on RPN proposals (its selective-search proposals are SPPNet's). The Faster R-CNN recipe's
    # RoIAlign box head is in the Mask R-CNN recipe, which inherits it (the tool tests below).
    "sppnet": ("sppnet_resnet18_shapes", [], {"MaxRoiPool", "NonMaxSuppression"}),
    "fast_rcnn_pooling_on_rpn": ("faster_rcnn_resnet18_shapes",
                                 ["model.heads.det.pooler={type: roi_pool, output_size: 7}"],
                                 {"MaxRoiPool", "NonMaxSuppression"}),
    # torchvision's R50-FPN recipe (in-model resize, multi-level RoIAlign) on a ResNet-18 for time;
    # Mask R-CNN (FPN, mask head) is the exported files of the tool tests below
    "torchvision_faster_rcnn": ("faster_rcnn_r50_fpn_coco", ["model.backbone.name=resnet18",
                                                             "data.min_size_test=320", "data.max_size=480"],
                                {"RoiAlign", "NonMaxSuppression", "Resize"}),
}


def photos() -> list:
    """Two coco_tiny photos of different sizes, or two synthetic images without ../shared."""
    folder = os.path.join(COCO_TINY, "val2017")
    if os.path.isdir(folder):
        from detseg.data.io import read_image
        return [read_image(os.path.join(folder, f)) for f in sorted(os.listdir(folder))[:2]]
    return [synthetic_photo((300, 400)), synthetic_photo((257, 181))]


def make_checkpoint(path, config: str, overrides: list) -> str:
    cfg = load_config(os.path.join(ROOT, "configs", config + ".yaml"), overrides)
    cfg.model.backbone.weights = None
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES))
    torch.save({"model": model.state_dict(), "config": to_dict(cfg), "class_names": CLASSES,
                "label_map": {"cat_ids": [1, 2, 3], "class_names": CLASSES}}, str(path))
    return str(path)


def assert_same(eager: dict, exported: dict, image_size) -> None:
    diff = compare_predictions(eager, exported)
    for name, row in diff.items():
        if "pixels" in row:  # FCN label maps: identical but where two classes tie to rounding
            differ = eager["heads"][name] != exported["heads"][name]
            if differ.any():
                top2 = eager["_scores"][name].topk(2, dim=0).values  # upsampled scores [2, H, W]
                assert (top2[0] - top2[1])[differ].max() < 1e-4, (name, row)
            continue
        assert row["count"][0] == row["count"][1], (name, row)
        assert row["count"][0] > 0, "a random-init detector finds something in a photo"
        assert row["box"] <= BOX_TOL and row["score"] <= SCORE_TOL and row["labels_equal"], (name, row)
        a, b = eager["heads"][name], exported["heads"][name]
        if a.masks is not None:
            assert a.masks.shape == b.masks.shape == (len(a),) + tuple(image_size)
            # masks differ only where the pasted probability sits at the 0.5 threshold's rounding
            from detseg.ops.paste_masks import paste_masks
            differ = a.masks != b.masks
            if differ.any():
                probs = paste_masks(eager["_probs"], a.boxes, tuple(image_size), threshold=None)
                assert (probs[differ] - 0.5).abs().max() < 1e-4


@pytest.mark.parametrize("head", sorted(HEADS))
def test_exported_files_reproduce_the_eager_model(head, tmp_path):
    config, overrides, ops = HEADS[head]
    ckpt = make_checkpoint(tmp_path / "model.pth", config, overrides)
    predictor = load_model(ckpt, device="cpu")
    traced = Traced(predictor)  # one trace, both formats
    traced.write(str(tmp_path / "model.onnx"), "onnx")
    traced.write(str(tmp_path / "model.pt2"), "pt2")
    check_on_photos(predictor, tmp_path, ops)


def test_mask_rcnn_files_of_the_tool_reproduce_the_eager_model(mask_rcnn_files):
    root = mask_rcnn_files[0]
    check_on_photos(load_model(str(root / "model.pth"), device="cpu"), root,
                    {"RoiAlign", "NonMaxSuppression"})
    # the recipe's box head pools with RoIAlign as its mask head does: two RoiAlign nodes
    assert [n.op_type for n in onnx.load(str(root / "model.onnx")).graph.node].count("RoiAlign") == 2


def check_on_photos(predictor, folder, ops: set) -> None:
    """``folder``'s model.onnx and model.pt2 against ``predictor`` on two photos; a batched
    (semantic) graph also on a batch of them, same-size images in one call."""
    graph_ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert ops <= graph_ops, ops - graph_ops
    runners = [ExportedPredictor(str(folder / f"model.{fmt}")) for fmt in ("onnx", "pt2")]
    for image in photos():
        proposals = fixed_proposals(runners[0].meta, image)
        eager = eager_result(predictor, image, proposals)
        for runner in runners:
            assert_same(eager, runner(image, proposals), image.shape[:2])
    if not runners[0].meta["batch"]:
        return
    first, second = photos()
    images = [first, first[::-1].copy(), second]  # two of one size, then another size
    for runner in runners:
        calls, run = [], runner.runner
        runner.runner = lambda inputs, run=run: calls.append(tuple(inputs[0].shape[:1])) or run(inputs)
        outputs = runner.predict_batch(images)
        assert calls == [(2,), (1,)]
        for image, out in zip(images, outputs):
            assert_same(eager_result(predictor, image, None), out, image.shape[:2])


def eager_result(predictor, image, proposals) -> dict:
    """``predictor(image)`` plus the raw outputs that tell float ties from real differences:
    ``_probs`` (28 x 28 mask probabilities), ``_scores`` (upsampled class scores per semantic head)."""
    from detseg.data.prepare import prepare_image
    from detseg.data.transforms import collate
    eager = predictor(image, proposals)
    batch = collate([prepare_image(image, predictor.transform, 0, proposals)])
    with torch.no_grad():
        raw = predictor.model(batch)
    if "det" in raw and raw["det"][0].masks is not None:
        eager["_probs"] = raw["det"][0].masks
    h, w = batch.image_sizes[0]
    eager["_scores"] = {n: torch.nn.functional.interpolate(v[:, :, :h, :w], size=image.shape[:2],
                                                           mode="bilinear", align_corners=False)[0]
                        for n, v in raw.items() if isinstance(v, torch.Tensor)}
    return eager


@pytest.fixture(scope="module")
def mask_rcnn_files(tmp_path_factory):
    """A Mask R-CNN checkpoint, its .onnx / .pt2 exports written by tools/export.py, and the
    tool's reports."""
    import contextlib
    import io

    from tools import export as export_tool
    root = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(root / "model.pth", "mask_rcnn_resnet18_fpn_shapes", [])
    reports = {}
    for fmt in ("onnx", "pt2"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert export_tool.main(["--weights", ckpt, "--format", fmt]) == 0
        reports[fmt] = json.loads(out.getvalue().strip().splitlines()[-1])
    return root, reports


def test_export_tool_writes_metadata_and_checks_parity(mask_rcnn_files):
    root, reports = mask_rcnn_files
    for fmt, report in reports.items():
        assert report["output"] == str(root / f"model.{fmt}")  # beside the checkpoint by default
        assert report["outputs"] == ["det.boxes", "det.scores", "det.labels", "det.masks"]
        counts = report["check"]["0"]["det"]["count"]
        assert counts[0] == counts[1] > 0
    meta = {p.key: p.value for p in onnx.load(str(root / "model.onnx")).metadata_props}
    assert json.loads(meta["detseg.class_names"]) == CLASSES
    assert json.loads(meta["detseg.cat_ids"]) == [1, 2, 3]


def test_infer_runs_exported_files_with_the_eager_results(mask_rcnn_files, tmp_path):
    from tools import infer
    mask_rcnn_files = mask_rcnn_files[0]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    import cv2
    for i, image in enumerate(photos()):
        cv2.imwrite(str(image_dir / f"{i}.png"), image[..., ::-1])
    results = {}
    for name in ("model.pth", "model.onnx", "model.pt2"):
        out = tmp_path / name
        assert infer.main(["--weights", str(mask_rcnn_files / name), "--input", str(image_dir),
                           "--output", str(out), "--score-threshold", "0.3"]) == 0
        results[name] = json.loads((out / "results.json").read_text())
        assert sorted(os.path.splitext(f)[0] for f in os.listdir(out) if f[0] != ".") == ["0", "1", "images", "results"]
    ref = results["model.pth"]
    assert ref, "the random-init model detects something above 0.3"
    for name in ("model.onnx", "model.pt2"):
        got = list(results[name])
        assert len(got) == len(ref)
        for a in ref:  # each eager result has its twin (in order, but for float-tied scores)
            twin = next(b for b in got
                        if (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
                        and np.allclose(a["bbox"], b["bbox"], atol=BOX_TOL)
                        and abs(a["score"] - b["score"]) <= SCORE_TOL)
            got.remove(twin)


def test_infer_auto_backend_takes_a_cached_export(mask_rcnn_files, tmp_path, monkeypatch, capsys):
    """--backend auto runs ONNX Runtime once the checkpoint's export is in the cache (here the
    fixture's file, put where cached_export keeps it), eager otherwise; options only eager runs
    support are refused with ONNX Runtime in one line."""
    import shutil

    from detseg.export.cache import cached_path
    from tools import infer
    root = mask_rcnn_files[0]
    monkeypatch.setenv("DETSEG_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "a.png"
    import cv2
    cv2.imwrite(str(image), photos()[0][..., ::-1])
    args = infer.get_parser().parse_args(["--weights", str(root / "model.pth"), "--input", str(image)])
    assert infer.choose_backend(args, *infer.classify_input(str(image))) == "eager"  # 1 image, no export
    os.makedirs(tmp_path / "cache" / "exports")
    shutil.copy(root / "model.onnx", cached_path(str(root / "model.pth")))
    assert infer.choose_backend(args, *infer.classify_input(str(image))) == "onnxruntime"
    assert infer.main(["--weights", str(root / "model.pth"), "--input", str(image), "--output",
                       str(tmp_path / "out"), "--score-threshold", "0.3"]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())
    assert infer.main(["--weights", str(root / "model.pth"), "--input", str(image), "--backend",
                       "onnxruntime", "--half", "--output", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --backend onnxruntime") and "--half" in err[-1]


def _rewrite_metadata(src, dst, key, value):
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    if value is None:
        props.pop(key)
    else:
        props[key] = value
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save_model(model, str(dst))


@pytest.mark.parametrize("key,value,message", [
    ("detseg.export_format", "99", "export format 99"),
    ("detseg.class_names", None, "detseg.class_names is missing"),
    ("detseg.export_format", None, "not a detseg export"),
])
def test_files_of_another_version_or_missing_metadata_are_refused(mask_rcnn_files, tmp_path, key, value,
                                                                  message, capsys):
    from tools import infer
    mask_rcnn_files = mask_rcnn_files[0]
    bad = tmp_path / "bad.onnx"
    _rewrite_metadata(mask_rcnn_files / "model.onnx", bad, key, value)
    with pytest.raises(CheckpointError, match=message):
        load_model(str(bad))
    assert infer.main(["--weights", str(bad), "--input", str(mask_rcnn_files / "model.pth"),
                       "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]


def test_export_tool_refuses_bad_arguments_in_one_line(mask_rcnn_files, tmp_path, capsys):
    from tools import export as export_tool
    ckpt = str(mask_rcnn_files[0] / "model.pth")
    cases = [["--weights", ckpt, "--output", str(tmp_path / "m.tflite")],
             ["--weights", ckpt, "--format", "onnx", "--opset", "13", "--output", str(tmp_path / "m.onnx")],
             ["--weights", str(tmp_path / "missing.pth")],
             ["--weights", ckpt, "--output", str(tmp_path / "no" / "such" / "dir" / "m.onnx")],
             ["--weights", ckpt, "--static", "0", "640", "--output", str(tmp_path / "m.onnx")]]
    for argv in cases:
        assert export_tool.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert not list(tmp_path.glob("*.onnx"))


def test_static_export_is_for_files_of_its_size(tmp_path, capsys):
    """--static H W: fixed shapes in the graph, parity on a file of that size (the tool's own
    check), and a file of another size refused in one line naming the export."""
    from detseg.utils import UsageError
    from tools import export as export_tool
    ckpt = make_checkpoint(tmp_path / "model.pth", "fcn8s_resnet18_shapes", [])
    out = tmp_path / "static.onnx"
    assert export_tool.main(["--weights", ckpt, "--static", "240", "320", "--output", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["static_size"] == [240, 320] and report["check"]["0"]["seg"]["pixels"] <= 1e-4
    graph = onnx.load(str(out)).graph
    dims = [d for i in graph.input for d in i.type.tensor_type.shape.dim]
    # images [B, 3, 160, 213] (a 240x320 file after the recipe's resize), file_size [2]: only the
    # FCN graph's batch stays dynamic
    assert [d.dim_value if d.HasField("dim_value") else None for d in dims] == [None, 3, 160, 213, 2]
    runner = ExportedPredictor(str(out))
    assert runner(synthetic_photo((240, 320)))["semantic"].shape == (240, 320)
    with pytest.raises(UsageError, match=r"static.onnx: exported for 240x320 images .* is 300x400"):
        runner(synthetic_photo((300, 400)))
