"""Losses for imbalanced data: class weights from counts, focal loss, and the heads and the
trainer that use them."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from detseg.modeling.losses import LossConfig, class_weights, classification_loss
from tests.conftest import call_tool


def test_class_weights_from_counts():
    counts = torch.tensor([100.0, 10.0, 1.0])
    inv = class_weights(counts, "inverse")
    assert inv.mean().item() == pytest.approx(1.0)
    assert (inv / inv[0]).tolist() == pytest.approx([1.0, 10.0, 100.0])
    eff = class_weights(counts, "effective", beta=0.99)
    ratio = (eff[2] / eff[0]).item()
    assert 1.0 < ratio < 100.0  # the effective number grows more slowly than the count
    n = torch.tensor([100.0, 1.0])
    assert (class_weights(n, "effective", 0.99) / class_weights(n, "effective", 0.99)[0])[1].item() == \
        pytest.approx((1 - 0.99 ** 100) / (1 - 0.99), rel=1e-5)
    assert class_weights(counts, "effective", beta=1.0).tolist() == pytest.approx(inv.tolist())
    assert class_weights(counts, "none") is None
    w = class_weights(torch.tensor([50.0, 0.0, 5.0]), "inverse")
    assert w[1] == w[2] == w.max()  # a class never seen weighs as the rarest seen one



def test_effective_weights_that_come_out_uniform_say_so(caplog):
    """Pixel counts dwarf 1 / (1 - beta): every class's effective number is 1 / (1 - beta), the
    weights all 1, a run silently unweighted. One warning names the beta that would weigh."""
    pixels = torch.tensor([4e6, 3e5, 6e4, 2e4])
    with caplog.at_level("WARNING", logger="detseg.modeling.losses"):
        assert class_weights(pixels, "effective", beta=0.999).tolist() == pytest.approx([1.0] * 4, abs=1e-6)
    assert len(caplog.records) == 1 and "1 - 1/20000" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="detseg.modeling.losses"):
        w = class_weights(pixels, "effective", beta=1 - 1 / 20000)
    # that beta weighs the rare class up (its effective number (1 - e^-1) / (1 - beta)), quietly
    assert (w[3] / w[0]).item() == pytest.approx(1 / (1 - math.exp(-1)), rel=1e-3) and not caplog.records


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_easy_examples():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4, 5, 5), torch.randint(0, 4, (6, 5, 5))
    target[0, 0] = 255
    weight = torch.tensor([0.2, 1.0, 2.0, 0.8])
    for w in (None, weight):
        ce = F.cross_entropy(logits, target, weight=w, ignore_index=255)
        assert classification_loss(logits, target, "ce", weight=w, ignore_index=255) == pytest.approx(ce.item())
        assert classification_loss(logits, target, "focal", gamma=0.0, weight=w, ignore_index=255).item() == \
            pytest.approx(ce.item(), rel=1e-5)
    easy = torch.tensor([[8.0, 0.0]]), torch.tensor([0])
    hard = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    ratio_easy = (classification_loss(*easy, "focal", gamma=2.0) / F.cross_entropy(*easy)).item()
    ratio_hard = (classification_loss(*hard, "focal", gamma=2.0) / F.cross_entropy(*hard)).item()
    assert ratio_easy < 1e-6 < 0.5 < ratio_hard  # (1 - p_t)^2: ~0 for a sure hit, > 0.5 for a miss


def test_heads_take_their_loss_settings_and_class_counts():
    from detseg.config import load_config
    from detseg.modeling.model import build_model
    cfg = load_config(None, ["model.heads.seg.loss.class_weight=inverse"])
    head = build_model(cfg, 3).heads["seg"]
    assert head.class_weighted and head.count_kind == "pixels"
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8), dtype=torch.uint8)
    plain = head.loss(logits, target)
    head.set_class_counts([1000, 100, 10, 1])
    assert head.class_weight[3] > head.class_weight[0]
    assert head.loss(logits, target).item() != pytest.approx(plain.item())
    with pytest.raises(ValueError, match="for 4 classes"):
        head.set_class_counts([1, 2, 3])
    with pytest.raises(ValueError, match="choose one"):
        build_model(load_config(None, ["model.heads.seg.loss.kind=focal", "model.heads.seg.top_k_pixels=0.5"]), 3)
    cls_cfg = load_config(None, ["model.heads={cls: {type: classify, loss: {kind: focal, class_weight: effective}}}",
                                 "model.backbone.name=lenet5"])
    cls = build_model(cls_cfg, 5).heads["cls"]
    assert cls.count_kind == "images" and cls.loss_settings == LossConfig("focal", 2.0, "effective", 0.999)


def test_a_class_weighted_run_counts_once_and_a_resume_reads_the_counts(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    out = tmp_path / "run"
    args = ["data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64]", "data.min_size_test=64",
            f"data.train.ann_file={shapes_data['train']['ann_file']}",
            f"data.train.image_dir={shapes_data['train']['image_dir']}",
            "solver.warmup_iters=1", "solver.max_iter=2", "solver.checkpoint_period=2", "solver.eval_period=100",
            "model.heads.seg.loss.class_weight=effective", "model.heads.seg.loss.kind=focal",
            "--output-dir", str(out)]
    assert call_tool("train", args) == 0
    stored = json.load(open(out / "class_counts.json"))
    pixels = stored["counts"]["pixels"]
    assert len(pixels) == len(stored["class_names"]) + 1 and pixels[0] > max(pixels[1:]) > 0
    # a resume reads them back instead of counting again: the same weights, no count
    from detseg.data.coco import CocoDataset
    from tools import train
    seen = []
    real = train.apply_class_counts

    def spy(model, ds, folder):
        real(model, ds, folder)
        seen.append(model.heads["seg"].class_weight.tolist())
    monkeypatch.setattr(train, "apply_class_counts", spy)

    def no_count(self):
        raise AssertionError("counted again")
    monkeypatch.setattr(CocoDataset, "pixel_counts", no_count)
    assert call_tool("train", [*args, "--resume"]) == 0
    from detseg.modeling.losses import class_weights
    assert seen == [pytest.approx(class_weights(torch.tensor(pixels, dtype=torch.float64), "effective").tolist())]


def test_seesaw_loss_equals_its_formula_on_hand_made_logits():
    """Seesaw: the other classes' softmax terms scaled by (N_j / N_i)^p where j is rarer, times
    (sigma_j / sigma_i)^q where j outscores the true class; background rows and column plain."""
    from detseg.modeling.losses import seesaw_loss
    logits = torch.tensor([[2.0, 0.5, 1.0, 0.0],    # class 0 (frequent), scored right
                           [0.0, 1.0, 3.0, 0.5],    # class 1, outscored by class 2
                           [1.0, 0.0, 0.0, 2.0]])   # background (index 3)
    target = torch.tensor([0, 1, 3])
    counts = torch.tensor([1000.0, 100.0, 10.0, 5000.0])
    p, q = 0.8, 2.0
    probs = logits.softmax(1)
    expected = []
    for z, y, pr in zip(logits, target.tolist(), probs):
        s = torch.ones(4)
        if y != 3:
            for j in range(3):
                if j == y:
                    continue
                m = (counts[j] / counts[y]) ** p if counts[j] < counts[y] else 1.0
                c = (pr[j] / pr[y]) ** q if pr[j] > pr[y] else 1.0
                s[j] = m * c
        denom = sum(s[j] * z[j].exp() for j in range(4) if j != y) + z[y].exp()
        expected.append(-(z[y].exp() / denom).log())
    got = seesaw_loss(logits, target, counts, p, q, background=3)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    # with nothing rarer and nothing outscoring, it is the cross-entropy
    plain = torch.tensor([[3.0, 0.0, 0.0]])
    assert seesaw_loss(plain, torch.tensor([0]), torch.tensor([1.0, 1.0, 1.0])).item() == \
        pytest.approx(F.cross_entropy(plain, torch.tensor([0])).item())


def test_region_and_window_heads_take_focal_seesaw_and_instance_weights():
    from detseg.config import ConfigError, load_config
    from detseg.modeling.model import build_model
    cfg = load_config("configs/faster_rcnn_resnet18_shapes.yaml",
                      ["model.heads.det.loss.class_weight=inverse", "model.heads.det.loss.kind=seesaw",
                       "model.heads.det.proposals.rpn_loss=focal"])
    head = build_model(cfg, 3).heads["det"]
    assert head.count_kind == "instances" and head.background_last
    head.set_class_counts([100, 10, 1])
    w = head.class_weight.tolist()
    assert w[3] == 1.0 and w[0] < w[1] < w[2] and sum(w[:3]) == pytest.approx(3.0)
    # seesaw counts the labels it trains on, background included
    head.train()
    logits, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 3, 3, 3])
    head.classification_loss(logits, labels)
    assert head.seesaw_counts.tolist() == [2, 1, 0, 3]
    # the RPN's focal objectness loss is torchvision's sigmoid focal loss without alpha
    assert head.proposals.loss == "focal"
    sw = build_model(load_config("configs/sliding_window_resnet18_shapes.yaml",
                                 ["model.heads.det.loss.kind=focal"]), 3).heads["det"]
    assert sw.count_kind == "instances" and sw.loss_settings.kind == "focal"
    with pytest.raises((ValueError, ConfigError), match="seesaw"):
        build_model(load_config(None, ["model.heads.seg.loss.kind=seesaw"]), 3)


def test_a_region_head_is_weighted_by_the_training_instances(tmp_path, shapes_data):
    """train.py's class counts for a region head: instances per class (not images), stored in
    class_counts.json; the background output keeps weight 1."""
    from detseg.config import load_config
    from detseg.data.coco import CocoDataset
    from detseg.modeling.losses import class_weights
    from detseg.modeling.model import build_model
    from tools.train import apply_class_counts
    split = shapes_data["train"]
    ds = CocoDataset(split["ann_file"], split["image_dir"])
    model = build_model(load_config("configs/faster_rcnn_resnet18_shapes.yaml",
                                    ["model.heads.det.loss.class_weight=inverse"]), ds.num_classes)
    apply_class_counts(model, ds, str(tmp_path))
    stored = json.load(open(tmp_path / "class_counts.json"))["counts"]
    instances = [sum(a["category_id"] == c and not a.get("iscrowd") for a in ds.coco.dataset["annotations"])
                 for c in ds.cat_ids]
    assert stored == {"instances": instances} and sum(instances) > sum(ds.class_counts())
    expected = class_weights(torch.tensor(instances, dtype=torch.float64), "inverse").tolist() + [1.0]
    assert model.heads["det"].class_weight.tolist() == pytest.approx(expected)


def test_rpn_focal_objectness_loss_down_weights_easy_anchors():
    from torchvision.ops import sigmoid_focal_loss
    from detseg.modeling.proposals.rpn import RPN
    kwargs = dict(in_channels=8, features=["c4"], strides=[16], anchor_sizes=[[32.0]])
    torch.manual_seed(0)
    plain, focal = RPN(**kwargs), RPN(**kwargs, rpn_loss="focal", rpn_focal_gamma=2.0)
    focal.load_state_dict(plain.state_dict())
    anchors = torch.tensor([[0.0, 0, 32, 32], [40, 40, 72, 72], [100, 100, 132, 132]]).repeat(1, 1)
    batch = type("B", (), {"targets": [{"boxes": torch.tensor([[0.0, 0, 32, 32]])}]})()
    obj = torch.tensor([[3.0, -2.0, 0.5] * 1]).reshape(1, 3)
    delta = torch.zeros(1, 3, 4)
    torch.manual_seed(1)
    a = plain.losses(obj, delta, anchors, batch)["loss_rpn_cls"]
    torch.manual_seed(1)
    b = focal.losses(obj, delta, anchors, batch)["loss_rpn_cls"]
    target = torch.tensor([1.0, 0.0, 0.0])
    assert a.item() == pytest.approx(F.binary_cross_entropy_with_logits(obj[0], target).item(), rel=1e-5)
    assert b.item() == pytest.approx(sigmoid_focal_loss(obj[0], target, alpha=-1, gamma=2.0).mean().item(), rel=1e-5)
    assert b < a


def test_deferred_reweighting_weighs_from_its_share_of_the_run(caplog):
    """loss.class_weight_from (Cao et al. 2019's deferred re-weighting): the plain loss before
    that share of max_iter, the class-weighted one from there; a resumed run, or a length a time
    budget refits, switches at the right step; 0 weighs from the first step."""
    from types import SimpleNamespace

    from detseg.config import ConfigError, load_config
    from detseg.engine.hooks import DeferredReweighting, default_hooks
    from detseg.modeling.model import build_model

    def head_with(share):
        cfg = load_config(None, ["model.heads={cls: {type: classify, loss: {class_weight: inverse, "
                                 f"class_weight_from: {share}}}}}}}", "model.backbone.name=lenet5"])
        head = build_model(cfg, 3).heads["cls"]
        head.set_class_counts([100, 10, 1])
        return head, cfg

    head, cfg = head_with(0.5)
    assert any(isinstance(h, DeferredReweighting) for h in default_hooks(cfg, None))
    logits, target = torch.randn(8, 3), torch.tensor([0, 0, 0, 1, 1, 2, 2, 0])
    plain = F.cross_entropy(logits, target).item()
    weighted = F.cross_entropy(logits, target, weight=head.class_weight).item()
    assert weighted != pytest.approx(plain)
    hook = DeferredReweighting()
    hook.trainer = SimpleNamespace(model=head, iter=0, s=SimpleNamespace(max_iter=10))
    with caplog.at_level("INFO", logger="detseg.engine.hooks"):
        hook.before_train()
        seen = []
        for _ in range(10):
            seen.append(head.classification_loss(logits, target).item())
            hook.trainer.iter += 1
            hook.after_step()
    assert seen[:5] == pytest.approx([plain] * 5) and seen[5:] == pytest.approx([weighted] * 5)
    assert "plain loss until iteration 5" in caplog.text and "class weights on from iteration 5" in caplog.text
    # resumed past the switch: weighted from its first step; a refitted length moves the switch
    hook.trainer.iter = 7
    hook.before_train()
    assert head.applied_class_weight is not None
    hook.trainer.iter, hook.trainer.s.max_iter = 1, 4
    hook.before_train()
    assert head.applied_class_weight is None
    hook.trainer.iter = 2
    hook.after_step()
    assert head.applied_class_weight is not None
    # 0 (the default): from the first step, as before the setting
    head0, _ = head_with(0.0)
    hook.trainer = SimpleNamespace(model=head0, iter=0, s=SimpleNamespace(max_iter=10))
    hook.before_train()
    assert head0.classification_loss(logits, target).item() == pytest.approx(weighted)
    with pytest.raises(ConfigError, match="class_weight_from"):
        head_with(1.5)
