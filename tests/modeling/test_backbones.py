import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.ops import FrozenBatchNorm2d

from detseg.modeling.backbones import BACKBONES, WeightsError, build_backbone


@pytest.mark.parametrize("name", BACKBONES)
def test_output_shape_describes_the_features(name):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 96, 128))
    for key, spec in bb.output_shape().items():
        assert feats[key].shape[1] == spec.channels
        if name == "alexnet":  # torchvision's floor pooling: up to one cell short
            assert 0 <= -(-96 // spec.stride) - feats[key].shape[2] <= 1
        elif name == "lenet5":  # valid 5x5 convolutions: 96 -> 92 / 2 = 46 -> 42 / 2 = 21 -> 17
            assert feats[key].shape[2] == {"s4": 21, "c5": 17}[key]
        else:
            assert feats[key].shape[2] == -(-96 // spec.stride)  # ceil: every pixel covered
    if name.startswith("vgg"):
        assert bb.output_shape()["c5"].stride == 16


def test_every_backbone_is_a_config_choice_and_vgg16_keeps_its_checkpoint_keys():
    """The config's backbone names are exactly the built ones; VGG-16's stages are cut where they
    always were (stage keys ``stages.c5.24`` .. ``stages.c5.28``), so its checkpoints still load."""
    import typing

    from detseg.config import BackboneConfig
    assert set(typing.get_args(typing.get_type_hints(BackboneConfig)["name"])) == set(BACKBONES)
    bb = build_backbone("vgg16")
    assert [list(bb.stages[n]._modules) for n in bb.stage_names] == \
        [[str(i) for i in range(a, b)] for a, b in ((0, 10), (10, 17), (17, 24), (24, 30))]


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn"])
def test_torchvision_classifier_weights_load_into_the_new_backbones(tmp_path, name):
    """A torchvision checkpoint of the classifier gives the backbone's c5 exactly its features."""
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)().eval()
    path = str(tmp_path / f"{name}.pth")
    torch.save(ref.state_dict(), path)
    bb = build_backbone(name, weights=path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ours = bb(x)["c5"]
        layers = list(ref.features)
        if name.startswith("vgg"):  # detseg drops pool5 (ceil-mode pooling agrees at 96 px)
            layers = layers[:-1]
        theirs = torch.nn.Sequential(*layers)(x)
    assert torch.equal(ours, theirs)


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
