import pytest
import torch
import torch.nn.functional as F

from detseg.config import load_config
from detseg.modeling.backbones import build_backbone
from detseg.modeling.heads.fcn import FCNHead, Upsample
from detseg.modeling.model import build_model


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_initial_upsampling_is_bilinear_interpolation(factor):
    x = torch.randn(2, 5, 7, 4)
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(Upsample(5, factor)(x), expected, atol=1e-5, rtol=0)


def test_fcn8s_at_init_is_bilinear_upsampling_of_the_top_score_map():
    bb = build_backbone("resnet18").eval()
    head = FCNHead(in_shapes=bb.output_shape(), num_classes=3, variant="8s").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = bb(x)
        out = head(feats, (64, 96))
        top = head.score_top(head.fc(feats["c5"]))  # [1, 4, 2, 3]
    # Skip scores start at zero, so the chain 2x, 2x, 8x of bilinear steps is all there is.
    up = top
    for f in (2, 2, 8):
        up = F.interpolate(up, scale_factor=f, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, up, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18", "googlenet"])
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_matches_any_input_size(backbone, variant):
    bb = build_backbone(backbone).eval()
    head = FCNHead(in_shapes=bb.output_shape(), num_classes=2, variant=variant).eval()
    for h, w in [(97, 131), (64, 64), (45, 77)]:
        with torch.no_grad():
            out = head(bb(torch.randn(1, 3, h, w)), (h, w))
        assert out.shape == (1, 3, h, w)


def test_loss_ignores_255_and_model_returns_losses_and_logits():
    cfg = load_config(None, ["model.backbone.name=resnet18"])
    model = build_model(cfg, num_classes=2)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    sem = torch.full((2, 64, 64), 255, dtype=torch.uint8)
    sem[:, :32] = 1
    model.train()
    losses = model({"images": images, "semantic": sem})
    assert set(losses) == {"loss", "loss_fcn"} and losses["loss"].requires_grad
    logits = model.heads["seg"](model.backbone(model.preprocess(images)), (64, 64))
    manual = F.cross_entropy(logits[:, :, :32].permute(0, 2, 3, 1).reshape(-1, 3),
                             torch.ones(2 * 32 * 64, dtype=torch.long))
    assert torch.isfinite(losses["loss"])
    assert model.heads["seg"].loss(logits, sem).item() == pytest.approx(manual.item(), rel=1e-4)
    model.eval()
    with torch.no_grad():
        assert model({"images": images})["seg"].shape == (2, 3, 64, 64)


def test_labels_at_in_bands_equals_one_upsampling():
    """A huge photo's label map is made band by band; the labels are those of one F.interpolate
    (the 8000 x 8000, 81-class case would need 20 GB in one piece)."""
    from detseg.modeling.heads.fcn import labels_at
    torch.manual_seed(0)
    for c, h, w, size in [(5, 40, 60, (333, 517)), (81, 50, 50, (800, 801)), (3, 7, 9, (100, 64))]:
        logits = torch.randn(c, h, w)
        whole = torch.nn.functional.interpolate(logits[None], size=size, mode="bilinear",
                                                align_corners=False)[0].argmax(0).to(torch.uint8)
        assert torch.equal(labels_at(logits, size), whole)
        banded = labels_at(logits, size, budget_bytes=c * size[1] * 4 * 7)  # 7 rows a band
        assert (banded != whole).float().mean() < 1e-4  # only float ties may differ


def test_paper_head_keeps_its_keys_and_bn_head_normalises():
    """head_norm "none" is the paper's head with the keys of checkpoints made before the option
    (fc.0 conv with bias, nothing at fc.1); "bn" adds BatchNorm there and drops the conv's bias."""
    bb = build_backbone("resnet18")
    plain = FCNHead(in_shapes=bb.output_shape(), num_classes=3)
    assert {k for k in plain.state_dict() if k.startswith("fc.")} == {"fc.0.weight", "fc.0.bias"}
    normed = FCNHead(in_shapes=bb.output_shape(), num_classes=3, head_norm="bn")
    assert isinstance(normed.fc[1], torch.nn.BatchNorm2d) and normed.fc[0].bias is None
    with pytest.raises(ValueError, match="head_norm"):
        FCNHead(in_shapes=bb.output_shape(), num_classes=3, head_norm="gn")


def test_aux_classifier_adds_a_weighted_loss_in_training_only():
    cfg = load_config("configs/fcn8s_resnet18_shapes.yaml", ["model.heads.seg.aux_weight=0.4"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2)
    head = model.heads["seg"]
    head_norm = "bn" if isinstance(head.fc[1], torch.nn.BatchNorm2d) else "none"
    images = torch.randint(0, 255, (2, 3, 72, 88), dtype=torch.uint8)
    sem = torch.randint(0, 3, (2, 72, 88), dtype=torch.uint8)
    sem[:, :8] = 255
    model.train()
    torch.manual_seed(1)
    losses = model({"images": images, "semantic": sem})
    assert set(losses) == {"loss", "loss_fcn", "loss_fcn_aux"}
    assert losses["loss"].item() == pytest.approx((losses["loss_fcn"] + losses["loss_fcn_aux"]).item())
    # The aux loss is 0.4 x the cross entropy of the stride-16 classifier, upsampled 16x.
    model.eval()  # dropout off: the same aux logits as a deterministic recomputation
    feats = model.backbone(model.preprocess(images))
    aux = F.interpolate(head.aux(feats["c4"]), scale_factor=16, mode="bilinear", align_corners=False)
    expected = 0.4 * F.cross_entropy(aux[..., :72, :88], sem.long(), ignore_index=255)
    eval_losses = head.forward_train(feats, {"images": images, "semantic": sem})
    assert eval_losses["loss_fcn_aux"].item() == pytest.approx(expected.item(), rel=1e-4)
    losses["loss"].backward()
    assert head.aux[0].weight.grad.abs().sum() > 0
    # Inference ignores it: the logits equal those of a head without one holding the same weights.
    plain = FCNHead(in_shapes=model.backbone.output_shape(), num_classes=2, head_norm=head_norm).eval()
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("aux.")})
    with torch.no_grad():
        torch.testing.assert_close(head(feats, (72, 88)), plain(feats, (72, 88)))
    assert "aux.4.weight" in head.class_axes()  # remapped with the other score layers when fine-tuning


def test_top_k_pixels_averages_only_the_hardest_labelled_pixels():
    bb = build_backbone("resnet18")
    head = FCNHead(in_shapes=bb.output_shape(), num_classes=2, top_k_pixels=0.25)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 10, requires_grad=True)
    sem = torch.randint(0, 3, (2, 8, 10), dtype=torch.uint8)
    sem[:, :4] = 255  # half the pixels ignored: k is a quarter of the 80 labelled ones
    per_pixel = F.cross_entropy(logits, sem.long(), ignore_index=255, reduction="none")
    labelled = per_pixel[sem != 255]
    expected = labelled.sort(descending=True).values[:20].mean()
    loss = head.loss(logits, sem)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > F.cross_entropy(logits, sem.long(), ignore_index=255).item()
    loss.backward()
    # Only the 20 hardest pixels get a gradient.
    assert int((logits.grad.abs().sum(1) > 0).sum()) == 20
    with pytest.raises(ValueError, match="top_k_pixels"):
        FCNHead(in_shapes=bb.output_shape(), num_classes=2, top_k_pixels=0.0)


def test_fcn_options_are_checked_at_config_load():
    from detseg.config import ConfigError
    with pytest.raises(ConfigError, match="aux_weight"):
        load_config("configs/fcn8s_resnet18_shapes.yaml", ["model.heads.seg.aux_weight=-0.5"])
    with pytest.raises(ConfigError, match="head_norm"):
        load_config("configs/fcn8s_resnet18_shapes.yaml", ["model.heads.seg.head_norm=gn"])
    with pytest.raises(ConfigError, match="top_k_pixels"):
        load_config("configs/fcn8s_resnet18_shapes.yaml", ["model.heads.seg.top_k_pixels=1.5"])
