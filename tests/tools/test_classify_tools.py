"""A classifier through the tools: train.py on a folder of images, eval.py, infer.py (top-k printed
and drawn), the Python API, and export with parity."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import call_tool


def brightness_folders(root, counts: dict, seed: int) -> None:
    """``root/<split>/<class>/<i>.jpg``, ``counts[split][class]`` images a class: "dark" ones
    around grey level 40, "light" ones around 210, with noise."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            os.makedirs(root / split / cls)
            for i in range(n):
                base = 40 if cls == "dark" else 210
                img = np.clip(base + rng.normal(0, 20, (36, 40, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / split / cls / f"{i}.jpg"), img)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LeNet-5 trained for a few iterations on a user's folder per class (two classes that differ
    in brightness, so that even a short run is right on most images)."""
    root = tmp_path_factory.mktemp("cls")
    brightness_folders(root, {"train": {"dark": 24, "light": 24}, "val": {"dark": 8, "light": 8}}, seed=0)
    out = root / "run"
    args = ["--config", "configs/classify_lenet5_digits.yaml", f"data.train.image_dir={root / 'train'}",
            f"data.val.image_dir={root / 'val'}", "data.batch_size=8", "data.classify.crop_ratio=0.875",
            "solver.max_iter=30", "solver.eval_period=30", "solver.checkpoint_period=30",
            "solver.warmup_iters=2", "--output-dir", str(out)]
    assert call_tool("train", args) == 0
    return root, out


def test_train_writes_classification_metrics_and_the_confusion_figure(trained):
    root, out = trained
    evals = [json.loads(x) for x in open(out / "metrics.jsonl") if "top1" in x]
    assert evals and 0.0 <= evals[-1]["top1"] <= 1.0 and "balanced_accuracy" in evals[-1]
    assert "top5" not in evals[-1]  # two classes: top-5 says nothing
    assert (out / "best.pth").is_file()


def test_eval_infer_api_and_export_agree(trained, tmp_path, capsys):
    root, out = trained
    assert call_tool("eval", ["--weights", str(out / "best.pth"), "--output", str(tmp_path / "ev")]) == 0
    metrics = json.load(open(tmp_path / "ev" / "metrics.json"))
    logged = [json.loads(x) for x in open(out / "metrics.jsonl") if "top1" in x][-1]
    assert metrics["top1"] == pytest.approx(logged["top1"])
    # the rare / common / frequent split from the checkpoint's own training split, as in training
    split = {k: v for k, v in logged.items() if k.startswith("accuracy_")}
    assert split and {k: metrics.get(k) for k in split} == pytest.approx(split)
    assert (tmp_path / "ev" / "classification_confusion.png").is_file()

    from detseg import load_model
    predictor = load_model(str(out / "best.pth"))
    image = cv2.cvtColor(cv2.imread(str(root / "val" / "light" / "0.jpg")), cv2.COLOR_BGR2RGB)
    result = predictor(image)
    assert result["classes"].shape == (2,) and float(result["classes"].sum()) == pytest.approx(1.0, abs=1e-5)
    top = predictor.top_k(result["classes"], 5)
    assert [c for c, _ in top] in (["light", "dark"], ["dark", "light"]) and top[0][1] >= top[1][1]

    capsys.readouterr()
    assert call_tool("infer", ["--weights", str(out / "best.pth"), "--input", str(root / "val" / "light"),
                               "--output", str(tmp_path / "inf"), "--save-txt"]) == 0
    printed = capsys.readouterr().out
    assert "0.jpg: " in printed and ("light" in printed or "dark" in printed)
    records = json.load(open(tmp_path / "inf" / "results.json"))
    assert {r["rank"] for r in records} == {1, 2} and len(records) == 2 * 8
    assert (tmp_path / "inf" / "0.jpg").is_file() and (tmp_path / "inf" / "labels" / "0.txt").is_file()

    onnx = tmp_path / "cls.onnx"
    assert call_tool("export", ["--weights", str(out / "best.pth"), "--output", str(onnx)]) == 0
    exported = load_model(str(onnx))
    assert exported.meta["batch"] is True and exported.meta["classify"]["size"] == 32
    several = [image, cv2.resize(image, (60, 50))]
    for a, b in zip(predictor.predict_batch(several), exported.predict_batch(several)):
        torch.testing.assert_close(b["classes"], a["classes"], atol=1e-4, rtol=0)


def test_a_classifier_pooling_to_a_larger_grid_exports_with_parity(tmp_path):
    """AlexNet's classifier pools its map to 6 x 6; at 64 px the map is smaller than that. The
    graph is traced at the classification size, so the exported pooling is the eager one."""
    from detseg.api import Predictor
    from detseg.config import load_config
    from detseg.export import export
    from detseg.export.parity import check_parity, synthetic_photo
    from detseg.modeling.model import build_model
    cfg = load_config("configs/classify_resnet18_shapes.yaml",
                      ["model.backbone.name=alexnet", "model.heads.cls.hidden=[32]", "data.classify.size=64"])
    torch.manual_seed(0)
    model = build_model(cfg, 4)
    with torch.no_grad():  # confident outputs, so that a wrong pooling shows in the probabilities
        model.heads["cls"].classifier[-1].weight.mul_(200)
    predictor = Predictor(model, cfg, ["a", "b", "c", "d"], [1, 2, 3, 4])
    path = str(tmp_path / "alexnet.onnx")
    meta = export(predictor, path)
    assert meta["classify"] == {"size": 64, "crop_ratio": 1.0}
    images = [synthetic_photo((50, 70)), synthetic_photo((300, 200))]
    spread = max(float(predictor(im)["classes"].max() - predictor(im)["classes"].min()) for im in images)
    assert spread > 0.1  # the check below compares probabilities that mean something
    check_parity(predictor, path, images)


def test_rebalance_refits_only_the_classifiers_last_layer(trained, tmp_path):
    """tools/rebalance.py on an image classifier: the embeddings of the training folder (balanced
    here: nothing to make), the last linear layer fitted again, every other weight kept, and the
    re-fitted model still right on the val images."""
    root, out = trained
    assert call_tool("rebalance", ["--weights", str(out / "best.pth"), "--output", str(tmp_path / "rb"),
                                   "--eval"]) == 0
    report = json.load(open(tmp_path / "rb" / "rebalance.json"))
    assert report["vectors_before"] == report["vectors_after"] == {"dark": 24, "light": 24}
    old = torch.load(out / "best.pth", weights_only=True)["model"]
    new = torch.load(tmp_path / "rb" / "model.pth", weights_only=True)["model"]
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    last = max(int(k.split(".")[3]) for k in old if k.startswith("heads.cls.classifier."))
    assert changed == {f"heads.cls.classifier.{last}.weight", f"heads.cls.classifier.{last}.bias"}
    after = json.load(open(tmp_path / "rb" / "eval_after" / "metrics.json"))
    assert after["top1"] >= 0.9


def test_rebalance_setting_refits_after_training_as_the_tool_does(tmp_path):
    """``solver.rebalance.method: smote`` in a recipe: after training, the rare class's embeddings
    raised to the frequent one's count and the last layer re-fitted into <run>/rebalanced,
    the same weights tools/rebalance.py gives on the same checkpoint."""
    brightness_folders(tmp_path, {"train": {"dark": 16, "light": 4}, "val": {"dark": 3, "light": 3}}, seed=1)
    out = tmp_path / "run"
    args = ["--config", "configs/classify_lenet5_digits.yaml", f"data.train.image_dir={tmp_path / 'train'}",
            f"data.val.image_dir={tmp_path / 'val'}", "data.batch_size=4", "solver.max_iter=6",
            "solver.eval_period=6", "solver.checkpoint_period=6", "solver.warmup_iters=1",
            "solver.rebalance.method=smote", "solver.rebalance.k_neighbors=2", "--output-dir", str(out)]
    assert call_tool("train", args) == 0
    report = json.load(open(out / "rebalanced" / "rebalance.json"))
    assert report["vectors_before"] == {"dark": 16, "light": 4}
    assert report["vectors_after"] == {"dark": 16, "light": 16}
    assert (out / "rebalanced" / "eval_after" / "metrics.json").is_file()
    assert call_tool("rebalance", ["--weights", str(out / "best.pth"), "--output", str(tmp_path / "tool"),
                                   "--method", "smote", "--k-neighbors", "2"]) == 0
    by_setting = torch.load(out / "rebalanced" / "model.pth", weights_only=True)["model"]
    by_tool = torch.load(tmp_path / "tool" / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(by_setting[k], by_tool[k]) for k in by_tool)


def test_rebalance_setting_on_a_model_without_a_classifier_stops_before_training(tmp_path, capsys):
    """FCN has no feature-vector classifier: one config error line, and nothing trained."""
    out = tmp_path / "run"
    code = call_tool("train", ["--config", "configs/fcn8s_resnet18_shapes.yaml", "solver.rebalance.method=smote",
                               "data.shapes.num_train=2", "data.shapes.num_val=1", "solver.max_iter=1",
                               "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: solver.rebalance:"), err
    assert not list(out.glob("*.pth"))
    code = call_tool("train", ["--config", "configs/fcn8s_resnet18_shapes.yaml", "solver.rebalance.method=smote",
                               "solver.rebalance.head=seg", "data.shapes.num_train=2", "data.shapes.num_val=1",
                               "solver.max_iter=1", "--output-dir", str(tmp_path / "named")])
    err = capsys.readouterr().err.strip().splitlines()  # the setting named as the config names it
    assert code == 1 and err == [err[0]] and err[0].startswith("error: solver.rebalance: head seg: a FCNHead"), err


def test_a_class_weighted_classifier_trains_on_its_folders_counts(tmp_path):
    """loss.class_weight on the image classifier: images per class counted from the folders, kept
    in class_counts.json (a classification dataset has no pixels or instances to count)."""
    brightness_folders(tmp_path, {"train": {"dark": 12, "light": 3}}, seed=2)
    out = tmp_path / "run"
    assert call_tool("train", ["--config", "configs/classify_lenet5_digits.yaml",
                               f"data.train.image_dir={tmp_path / 'train'}", "data.batch_size=4",
                               "solver.max_iter=2", "solver.warmup_iters=1",
                               "model.heads.cls.loss.class_weight=inverse", "--output-dir", str(out)]) == 0
    stored = json.load(open(out / "class_counts.json"))
    assert stored == {"class_names": ["dark", "light"], "counts": {"images": [12, 3]}}
