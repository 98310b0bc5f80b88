import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.ops import FrozenBatchNorm2d

from detseg.modeling.backbones import WeightsError, build_backbone


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50", "googlenet", "densenet121"])
def test_output_shape_describes_the_features(name):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 96, 128))
    for key, spec in bb.output_shape().items():
        assert feats[key].shape[1] == spec.channels
        assert feats[key].shape[2] == -(-96 // spec.stride)  # ceil: every pixel covered
    if name == "vgg16":
        assert bb.output_shape()["c5"].stride == 16


def test_fpn_frozen_bn_and_freeze_at():
    bb = build_backbone("resnet18", fpn=True, fpn_channels=64, norm="frozen_bn", freeze_at=2)
    assert {k: (s.channels, s.stride) for k, s in bb.output_shape().items()} == \
        {"p3": (64, 8), "p4": (64, 16), "p5": (64, 32)}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    body = bb.body
    assert not any(p.requires_grad for p in body.stages["stem"].parameters())
    assert not any(p.requires_grad for p in body.stages["c2"].parameters())
    assert all(p.requires_grad for p in body.stages["c3"].parameters())


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_torchvision_weights_file_loads_exactly(tmp_path, ext):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    state = ref.state_dict()
    path = str(tmp_path / f"r18.{ext}")
    if ext == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    bb = build_backbone("resnet18", weights=path).eval()
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)["c5"]
        r = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
    assert torch.equal(ours, r)


def test_wrong_weights_are_clear_errors(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsError, match="shape mismatch.*right architecture"):
        build_backbone("resnet18", weights=str(tmp_path / "r50.pth"))
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="ResNet18_Weights"):
        build_backbone("resnet18", weights="NOPE")


def test_missing_and_unexpected_keys_reported_in_one_line(tmp_path, caplog):
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.conv2.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with caplog.at_level("WARNING"):
        build_backbone("resnet18", weights=str(tmp_path / "partial.pth"))
    lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(lines) == 1
    assert "1 missing keys" in lines[0] and "layer4.1.conv2.weight" in lines[0]
    assert "1 unexpected keys" in lines[0] and "extra.weight" in lines[0]
