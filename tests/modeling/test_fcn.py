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
    assert FCNHead.loss(logits, sem).item() == pytest.approx(manual.item(), rel=1e-4)
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
