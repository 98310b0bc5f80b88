"""The classify head, the classic backbones as classifiers, and convolutionalization."""
import pytest
import torch

from detseg.config import ConfigError, load_config
from detseg.evaluation.classification import ClassificationEvaluator
from detseg.modeling.backbones import build_backbone, coarsest, ShapeSpec
from detseg.modeling.convolutionalize import ConvolutionalClassifier, convolutionalize
from detseg.modeling.heads import CLASSES
from detseg.modeling.heads.classify import ClassifyHead
from detseg.modeling.model import build_model
from detseg.structures import Batch


def test_lenet5_is_the_papers_network():
    bb = build_backbone("lenet5")
    feats = bb(torch.zeros(2, 3, 32, 32))
    # C5: 120 maps of 1 x 1 on a 32 x 32 input; F6: 84 units
    assert feats["c5"].shape == (2, 120, 1, 1) and feats["s4"].shape == (2, 16, 5, 5)
    head = ClassifyHead(in_shapes=bb.output_shape(), num_classes=10, arch="lenet5")
    linears = [m for m in head.classifier if isinstance(m, torch.nn.Linear)]
    assert head.feature == "c5" and [(m.in_features, m.out_features) for m in linears] == [(120, 84), (84, 10)]
    assert any(isinstance(m, torch.nn.Tanh) for m in head.classifier)


def test_the_coarsest_map_of_a_tie_is_the_deepest():
    shapes = {"c3": ShapeSpec(8, 8), "c4": ShapeSpec(16, 16), "c5": ShapeSpec(32, 16)}
    assert coarsest(shapes) == "c5"


@pytest.mark.parametrize("arch,kind,hidden", [("alexnet", "fc", [4096, 4096]), ("vgg11_bn", "fc", [4096, 4096]),
                                              ("resnet18", "gap", []), ("densenet121", "gap", [])])
def test_auto_picks_the_architectures_own_classifier(arch, kind, hidden):
    bb = build_backbone(arch)
    head = ClassifyHead(in_shapes=bb.output_shape(), num_classes=3, arch=arch)
    widths = [m.out_features for m in head.classifier if isinstance(m, torch.nn.Linear)][:-1]
    assert head.kind == kind and widths == hidden


def test_googlenet_auxiliary_losses_train_and_are_not_run_at_test():
    cfg = load_config(None, ["model.backbone.name=googlenet", "model.backbone.out_features=[c4a, c4d, c5]",
                             "model.heads={cls: {type: classify, aux_features: [c4a, c4d]}}"])
    model = build_model(cfg, 4)
    batch = Batch(images=torch.randint(0, 255, (2, 3, 96, 96), dtype=torch.uint8),
                  labels=torch.tensor([0, 3]))
    losses = model.train()(batch)
    assert set(losses) == {"loss", "loss_cls", "loss_aux1", "loss_aux2"}
    # weighted 0.3 as in the paper: the sum is the main loss plus 0.3 x each auxiliary one
    head = model.heads["cls"]
    assert head.aux_weight == pytest.approx(0.3)
    losses["loss"].backward()
    assert head.aux[0].fc2.weight.grad is not None
    with torch.no_grad():
        probs = model.eval()(batch)["cls"]
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2))
    assert model.heads["cls"].output == CLASSES


def test_an_aux_feature_the_backbone_does_not_return_is_a_config_error():
    cfg = load_config(None, ["model.backbone.name=googlenet",
                             "model.heads={cls: {type: classify, aux_features: [c4a]}}"])
    with pytest.raises(ConfigError, match="c4a.*out_features"):
        build_model(cfg, 4)


def test_a_classify_head_cannot_share_a_model_with_a_detector():
    from detseg.modeling.model import data_needs
    cfg = load_config(None, ["model.heads={cls: {type: classify}, seg: {type: fcn}}"])
    with pytest.raises(ConfigError, match="classify head"):
        data_needs(cfg)


def test_convolutionalized_lenet_scores_every_window_as_its_crop():
    """LeNet-5 has no zero padding: the converted network's score at each window equals the
    classifier's score on that window's crop, on every window of a larger image."""
    torch.manual_seed(0)
    bb = build_backbone("lenet5").eval()
    head = ClassifyHead(in_shapes=bb.output_shape(), num_classes=10, arch="lenet5").eval()
    conv = ConvolutionalClassifier(bb, head, (32, 32)).eval()
    x = torch.randn(1, 3, 44, 52)
    with torch.no_grad():
        maps = conv(x)
        assert maps.shape == (1, 10, 4, 6) and conv.stride == 4
        for i in range(maps.shape[2]):
            for j in range(maps.shape[3]):
                crop = x[:, :, 4 * i:4 * i + 32, 4 * j:4 * j + 32]
                torch.testing.assert_close(maps[:, :, i, j], head.logits(bb(crop)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,f", [("alexnet", 3), ("vgg11", 4), ("resnet18", 2), ("lenet5", 2)])
def test_convolutionalized_classifier_equals_the_classifier_on_every_window_of_the_map(arch, f):
    """The head's conversion is exact for any architecture and pooling grid (AlexNet's 6 x 6 from
    3 x 3 maps, VGG's 7 x 7 from 4 x 4, global pooling); the whole-image equality then holds
    wherever the backbone's own padding does not reach (see the LeNet test)."""
    torch.manual_seed(1)
    bb = build_backbone(arch)
    # the architecture's pooling grid and layer count, narrower hidden layers (4096 wide is slow to build)
    hidden = [64, 32] if arch in ("alexnet", "vgg11") else None
    head = ClassifyHead(in_shapes=bb.output_shape(), num_classes=5, arch=arch, hidden=hidden).eval()
    c = bb.output_shape()[head.feature].channels
    fmap = torch.randn(2, c, f + 3, f + 2)
    with torch.no_grad():
        out = convolutionalize(head.classifier, c, (f, f)).eval()(fmap)
        assert out.shape == (2, 5, 4, 3)
        for i in range(4):
            for j in range(3):
                torch.testing.assert_close(out[:, :, i, j], head.classifier(fmap[:, :, i:i + f, j:j + f]),
                                           atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and a whole training-size image scores as the classifier
        x = torch.randn(1, 3, 64, 64)
        conv = ConvolutionalClassifier(bb.eval(), head, (64, 64)).eval()
        torch.testing.assert_close(conv(x)[:, :, 0, 0], head.logits(bb(x)), atol=1e-5, rtol=1e-5)


def test_classification_metrics_by_hand():
    ev = ClassificationEvaluator(["a", "b", "c", "d", "e", "f"], topk=(2, 5))
    scores = torch.tensor([[0.9, 0.1, 0, 0, 0, 0],  # a -> a
                           [0.2, 0.7, 0.1, 0, 0, 0],  # a -> b, a second
                           [0.1, 0.8, 0.1, 0, 0, 0],  # b -> b
                           [0.5, 0.2, 0.3, 0, 0, 0]])  # c -> a, c second
    ev.update(scores, torch.tensor([0, 0, 1, 2]))
    m = ev.compute()
    assert m["top1"] == pytest.approx(0.5) and m["top2"] == pytest.approx(1.0)
    assert m["per_class_accuracy"]["a"] == pytest.approx(0.5) and m["per_class_accuracy"]["c"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)  # classes without images left out
    assert m["diagnostics"]["confusion"][0][:3] == [1, 1, 0] and m["num_images"] == 4


def test_a_classifier_keeps_its_best_checkpoint_by_top1_unless_told_otherwise():
    assert load_config(None, ["model.heads={cls: {type: classify}}"]).solver.best_metric == "top1"
    cfg = load_config(None, ["model.heads={cls: {type: classify}}", "solver.best_metric=balanced_accuracy"])
    assert cfg.solver.best_metric == "balanced_accuracy"
    assert load_config(None).solver.best_metric == "mIoU"  # the FCN default keeps its own


def test_a_sliding_window_or_fcn_model_starts_from_a_classifier_checkpoint(tmp_path):
    """``--init-from`` a classification run: the backbone's weights carry over (the classifier's
    class rows have no counterpart in a detector's background-and-classes layout, and stay fresh)."""
    from detseg.config import to_dict
    from detseg.engine.init_from import init_from
    torch.manual_seed(0)
    cls_cfg = load_config("configs/classify_resnet18_shapes.yaml")
    classifier = build_model(cls_cfg, 4)
    names = ["circle", "hexagon", "rectangle", "triangle"]
    path = tmp_path / "best.pth"
    torch.save({"model": classifier.state_dict(), "class_names": names, "config": to_dict(cls_cfg)}, path)
    for config in ("configs/sliding_window_resnet18_shapes.yaml", "configs/fcn8s_resnet18_shapes.yaml"):
        model = build_model(load_config(config), 4)
        report = init_from(model, str(path), ["circle", "rectangle", "triangle", "hexagon"], backbone="resnet18")
        for key, value in model.state_dict().items():
            if key.startswith("backbone."):
                assert torch.equal(value, classifier.state_dict()[key]), key
        assert any(k.startswith("backbone.") for k in report.loaded)
        assert "heads.cls.classifier.2.weight" in report.ignored  # [pool, flatten, linear]


# torch notes that an even "same" kernel (AlexNet's 6 x 6) pads a copy of the input: speed, not results
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("feature_size,kernel_size", [((3, 3), (5, 5)), ((1, 1), (7, 7)), ((2, 2), (6, 6)),
                                                      ((6, 6), (6, 6))])
def test_a_linear_layer_as_a_same_padded_convolution(feature_size, kernel_size):
    """The converted kernel, on a map whose cells around an output cell are the training map,
    gives the linear layer's output on that map's pooled grid (and a map larger than the kernel
    is refused)."""
    import torch.nn.functional as F
    from torch import nn

    from detseg.modeling.convolutionalize import linear_as_conv_kernel
    torch.manual_seed(0)
    c, pool, (fh, fw), (kh, kw) = 3, 2, feature_size, kernel_size
    linear = nn.Linear(c * pool * pool, 5)
    x = torch.randn(1, c, fh, fw)
    expected = linear(F.adaptive_avg_pool2d(x, pool).flatten(1))[0]
    kernel = linear_as_conv_kernel(linear.weight, c, pool, (fh, fw), (kh, kw))
    big = torch.randn(1, c, fh + 8, fw + 8)  # the training map at (4, 4), anything around it
    big[:, :, 4:4 + fh, 4:4 + fw] = x
    out = F.conv2d(big, kernel, linear.bias, padding="same")
    cy, cx = 4 + (fh - 1) // 2, 4 + (fw - 1) // 2  # the cell "same" padding centres the window on
    assert torch.allclose(out[0, :, cy, cx], expected, atol=1e-5)
    with pytest.raises(ValueError, match="cannot hold it"):
        linear_as_conv_kernel(linear.weight, c, pool, (kh + 1, kw), (kh, kw))


@pytest.mark.parametrize("config,extra", [
    ("configs/classify_resnet18_shapes.yaml", []),  # ResNet: its one linear layer is the score layer
    ("configs/classify_lenet5_digits.yaml", []),  # LeNet: C5 -> F6 (84, tanh) -> scores
])
def test_fcn_with_the_classifier_as_its_top_starts_as_that_classifier(tmp_path, config, extra):
    """FCN's ``top: classifier`` from a classification checkpoint: the classifier's linear layers
    become the head's convolutions, its class rows move by name (background fresh), and on an
    image of the classifier's training size the FCN's coarsest score map gives the classifier's
    logits."""
    from detseg.config import to_dict
    from detseg.engine.init_from import init_from
    torch.manual_seed(0)
    cls_cfg = load_config(config, extra)
    file_names = ["circle", "hexagon", "rectangle", "triangle"]
    classifier = build_model(cls_cfg, 4).eval()
    path = tmp_path / "best.pth"
    torch.save({"model": classifier.state_dict(), "class_names": file_names, "config": to_dict(cls_cfg)}, path)
    names = ["circle", "rectangle", "triangle", "star"]  # star: not in the file
    fcn_cfg = load_config(None, [f"model.backbone.name={cls_cfg.model.backbone.name}",
                                 "model.heads={seg: {type: fcn, variant: 32s, top: classifier}}"])
    model = build_model(fcn_cfg, len(names)).eval()
    bg_before = model.heads.seg.score_top.weight[0].clone()
    report = init_from(model, str(path), names, backbone=cls_cfg.model.backbone.name)
    head = model.heads.seg
    assert set(report.converted) == {f"heads.seg.{c}.{p}" for c in head.classifier_convs() for p in ("weight", "bias")}
    assert not any(k.startswith("heads.cls.classifier") for k in report.ignored)
    assert torch.equal(head.score_top.weight[0], bg_before)  # background: fresh
    x = torch.randn(1, 3, cls_cfg.data.classify.size, cls_cfg.data.classify.size)
    with torch.no_grad():
        expected = classifier.heads.cls.logits(classifier.backbone(x))[0]
        feats = model.backbone(x)
        scores = head.score_top(head.fc(feats[head.top]))[0]  # [K + 1, h, w]
    cy, cx = (scores.shape[1] - 1) // 2, (scores.shape[2] - 1) // 2
    for j, n in enumerate(names):
        if n in file_names:
            assert torch.allclose(scores[1 + j, cy, cx], expected[file_names.index(n)], atol=1e-4), n


def test_a_classifier_of_another_form_is_not_converted_and_the_report_says_why(tmp_path):
    from detseg.config import to_dict
    from detseg.engine.init_from import init_from
    cls_cfg = load_config("configs/classify_resnet18_shapes.yaml",
                          ["model.heads.cls.classifier=fc", "model.heads.cls.hidden=[32]", "model.heads.cls.pool_size=1"])
    path = tmp_path / "fc.pth"
    torch.save({"model": build_model(cls_cfg, 2).state_dict(), "class_names": ["a", "b"],
                "config": to_dict(cls_cfg)}, path)
    model = build_model(load_config(None, ["model.heads={seg: {type: fcn, top: classifier}}"]), 2)
    report = init_from(model, str(path), ["a", "b"], backbone="resnet18")
    assert not report.converted
    assert "2 linear layers" in report.reinitialised["heads.seg.score_top.weight"]


def test_fcn_top_classifier_refuses_a_norm():
    with pytest.raises(Exception, match="head_norm"):
        build_model(load_config(None, ["model.heads={seg: {type: fcn, top: classifier, head_norm: bn}}"]), 2)
