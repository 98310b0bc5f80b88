"""Heads named by what they are: the ``model.heads`` mapping, the Head protocol, the old layout
still loading, two region heads in one model, and a head of one's own (examples/)."""
import json
import logging
import os
import re
import sys

import pytest
import torch
import yaml
from torch import nn

from detseg.config import ConfigError, from_dict, load_config
from detseg.modeling.heads import MaskConfig, MaskHead, RegionHeadConfig
from detseg.modeling.poolers import RoIPoolConfig, SPPPoolerConfig
from detseg.data import shapes
from detseg.data.coco import CocoDataset
from detseg.data.transforms import collate, eval_transform
from detseg.engine.checkpoint import save_atomic
from detseg.modeling.backbones import build_backbone
from detseg.modeling.model import Model, build_model, data_needs
from tests.conftest import ROOT

RPN = {"source": "rpn", "rpn_features": ["p3", "p4", "p5"], "anchor_sizes": [[16, 24], [32, 48], [64, 128]],
       "pre_nms_top_n": [300, 100], "post_nms_top_n": [100, 50]}


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    split = shapes.generate(str(root / "ds"), seed=5, num_train=1, num_val=0)["train"]
    ds = CocoDataset(split["ann_file"], split["image_dir"], transform=eval_transform(128, 288),
                     with_masks=True)
    return split, ds, collate([ds[0]])


def test_old_layout_loads_with_one_notice(tmp_path, caplog):
    old = {"model": {"backbone": {"name": "resnet18", "fpn": True, "fpn_channels": 128},
                     "heads": ["spp"], "proposals": RPN,
                     "roi": {"feature": "p3", "levels": [7], "mapping": "fast_rcnn", "warp_size": 64},
                     "mask": {"enabled": True, "feature": "p3", "conv_dims": [64, 64]}}}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.WARNING, logger="detseg.config_upgrade"):
        cfg = load_config(str(path))
    notices = [r for r in caplog.records if "old head layout" in r.getMessage()]
    assert len(notices) == 1 and str(path) in notices[0].getMessage()
    (name, head), = cfg.model.heads.items()
    assert name == "spp" and isinstance(head, RegionHeadConfig)
    # levels [7] with Fast R-CNN's mapping was RoI pooling written the SPP way
    assert (head.feature, head.pooler) == ("p3", RoIPoolConfig(output_size=7))
    assert head.mask == MaskConfig(feature="p3", conv_dims=[64, 64])
    assert head.proposals.rpn_features == ["p3", "p4", "p5"]
    # an old section on top of the new layout (an old command-line override) reaches its heads
    cfg = load_config(os.path.join(ROOT, "configs/faster_rcnn_resnet18_shapes.yaml"),
                      ["model.roi.fc_dims=[32]", "model.roi.pooler=spp", "model.roi.levels=[2, 1]"])
    assert cfg.model.heads["det"].fc_dims == [32]
    assert cfg.model.heads["det"].pooler == SPPPoolerConfig(levels=[2, 1])
    # an old pooler string alone: its size is ambiguous, so the error says what to write
    for kind, section in (("roi_pool", "output_size: N"), ("spp", "levels: [L1, L2, ...]")):
        with pytest.raises(ConfigError, match=re.escape(f"pooler: {kind} without levels; write pooler: "
                                                        f"{{type: {kind}, {section}}}")):
            load_config(os.path.join(ROOT, "configs/faster_rcnn_resnet18_shapes.yaml"),
                        [f"model.heads.det.pooler={kind}"])


def test_shipped_configs_use_the_new_layout(caplog):
    import glob
    with caplog.at_level(logging.WARNING, logger="detseg.config_upgrade"):
        for path in glob.glob(os.path.join(ROOT, "configs", "*.yaml")):
            load_config(path)
    assert not [r.getMessage() for r in caplog.records if r.name == "detseg.config_upgrade"]


@pytest.mark.parametrize("pooler,key", [("spp", "aligned"), ("spp", "output_size"), ("roi_pool", "levels"),
                                        ("roi_pool", "mapping"), ("roi_pool", "features"),
                                        ("roi_align", "levels"), ("roi_align", "mapping")])
def test_a_pooler_key_its_type_does_not_use_is_an_error_naming_key_file_and_type(tmp_path, pooler, key):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": {"heads": {"det": {
        "type": "region", "pooler": {"type": pooler, key: [1] if key in ("levels", "features") else 1}}}}}))
    with pytest.raises(ConfigError, match=rf"'model\.heads\.det\.pooler\.{key}' \(from {path}\).*"
                                          rf"pooler type '{pooler}'"):
        load_config(str(path))


def test_old_pooler_keys_read_as_the_pooler_they_meant(caplog):
    from detseg.modeling.poolers import RoIAlignConfig
    old = {"type": "region", "feature": "p3", "fc_dims": [64]}
    cases = [({"pooler": "spp", "levels": [6, 3, 2, 1], "mapping": "sppnet", "aligned": False,  # a
               "sampling_ratio": 2, "multiscale_features": None}, SPPPoolerConfig()),  # checkpoint's
             ({"levels": [4, 2, 1]}, SPPPoolerConfig(levels=[4, 2, 1])),
             ({"levels": [7], "mapping": "fast_rcnn"}, RoIPoolConfig(output_size=7)),
             ({"pooler": "roi_pool", "levels": [5]}, RoIPoolConfig(output_size=5)),
             ({"pooler": "roi_align", "levels": [7], "aligned": True, "sampling_ratio": 0},
              RoIAlignConfig(output_size=7, aligned=True, sampling_ratio=0)),
             ({"multiscale_features": ["p2", "p3"], "levels": [7]},
              RoIAlignConfig(output_size=7, features=["p2", "p3"]))]
    for keys, expected in cases:
        with caplog.at_level(logging.WARNING, logger="detseg.config_upgrade"):
            caplog.clear()
            cfg = from_dict({"model": {"heads": {"det": {**old, **keys}}}})
        assert cfg.model.heads["det"].pooler == expected, keys
        assert len(caplog.records) == 1 and "read as pooler" in caplog.records[0].getMessage()


@pytest.mark.parametrize("heads,message", [
    ({"det": {"type": "yolo"}}, "model.heads.det.type"),
    ({"det": {"pooler": "spp"}}, "needs settings with a `type`"),
    ({"det": {"type": "region", "pooler": "max"}}, "model.heads.det.pooler"),
    ({"det": {"type": "region", "mask": {"feature": 3}}}, "model.heads.det.mask.feature"),
    ({"bad.name": {"type": "fcn"}}, "Python identifier"),
    ({"panoptic": {"type": "fcn"}}, "Python identifier"),
    ({}, "at least one head"),
    (["yolo"], "unknown head 'yolo'"),
])
def test_bad_head_settings_name_the_key(heads, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        from_dict({"model": {"heads": heads}})


def test_old_checkpoint_with_old_keys_loads_and_predicts_the_same(tmp_path, one_image):
    """A checkpoint written before the rename: config in the old layout, keys heads.spp.*."""
    from detseg.api import load_model
    _, ds, batch = one_image
    old_cfg = {"model": {"backbone": {"name": "resnet18", "fpn": True, "fpn_channels": 128},
                         "heads": ["spp"], "proposals": RPN, "fcn": {"variant": "8s"},
                         "roi": {"feature": "p3", "levels": [7], "mapping": "fast_rcnn", "warp_size": 224,
                                 "context_pad": 16, "score_thresh": 0.0},
                         "mask": {"enabled": False, "feature": None},
                         "sliding_window": {"feature": None}}}
    torch.manual_seed(0)
    model = build_model(from_dict(old_cfg), ds.num_classes).eval()
    assert all(k.startswith(("backbone.", "heads.spp.")) for k in model.state_dict())
    path = tmp_path / "old.pth"
    save_atomic({"model": model.state_dict(), "config": old_cfg, "class_names": ds.class_names,
                 "label_map": ds.label_map(), "num_classes": ds.num_classes}, str(path))
    predictor = load_model(str(path), device="cpu", fold_bn=False, channels_last=False)
    with torch.no_grad():
        expected = model(batch)["spp"][0]
        got = predictor.model(batch)["spp"][0]
    assert len(expected) > 0 and torch.equal(got.boxes, expected.boxes)


def test_two_region_heads_train_and_evaluate_side_by_side(one_image):
    from detseg.evaluation.runner import make_evaluate
    split, ds, batch = one_image
    common = {"type": "region", "feature": "p3", "fc_dims": [64], "proposals": RPN}
    cfg = from_dict({"model": {"backbone": {"name": "resnet18", "fpn": True, "fpn_channels": 64,
                                            "norm": "frozen_bn"},
                               "heads": {"det": {**common, "pooler": {"type": "roi_pool", "output_size": 7}},
                                         "det2": {**common, "pooler": {"type": "roi_align", "output_size": 7},
                                                  "mask": {"feature": "p3", "conv_dims": [32]}}}}})
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes)
    assert type(model.heads["det"].pooler) is not type(model.heads["det2"].pooler)
    losses = model.train()(batch)
    # shared loss names are kept apart by head name; the mask loss is det2's alone
    expected = {"det_loss_cls", "det2_loss_cls", "det_loss_rpn_cls", "det2_loss_rpn_cls", "loss_mask"}
    assert expected <= set(losses)
    assert "loss_cls" not in losses
    losses["loss"].backward()
    for name in ("det", "det2"):
        assert model.heads[name].predictor.cls_score.weight.grad.abs().sum() > 0
    assert data_needs(cfg).masks
    evaluate = make_evaluate(cfg, ds, [batch], None)
    with torch.no_grad():
        metrics = evaluate(model.eval())
    assert {"det_AP", "det2_AP", "det2_segm_AP"} <= set(metrics) and "det_segm_AP" not in metrics


def test_model_takes_only_heads():
    with pytest.raises(TypeError, match="not a detseg.modeling.heads.Head"):
        Model(build_backbone("resnet18"), {"x": nn.Linear(2, 2)})


def test_example_head_trains_through_config_model_trainer_and_evaluation(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("linear_seg_head", os.path.join(ROOT, "examples",
                                                                                  "linear_seg_head.py"))
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # a dataclass resolves its annotations through its module
    spec.loader.exec_module(example)
    assert example.main(["--iterations", "60", "--output-dir", str(tmp_path)]) == 0
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    losses = [r["loss_linear_seg"] for r in records if "loss_linear_seg" in r]
    assert len(losses) == 60  # logged every step; batches of 2 are noisy, so compare tenths
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6]), losses
    evals = [r for r in records if "mIoU" in r]
    assert evals and 0 < evals[-1]["mIoU"] <= 1
    # the checkpoint names the head type; the API loads it and answers with its semantic map
    from detseg.api import load_model
    best = tmp_path / "best.pth"
    assert best.exists()
    predictor = load_model(str(best), device="cpu")
    result = predictor(torch.zeros(3, 64, 80, dtype=torch.uint8))
    assert result["semantic"].shape == (64, 80) and set(result["heads"]) == {"seg"}


def settings_gaps(cls) -> tuple[set, set]:
    """(constructor arguments of head class ``cls``, its base classes' included, that are neither
    built by ``from_config`` nor a settings field; settings fields other than ``type`` and the
    consumed ones that no constructor argument takes)."""
    import dataclasses
    import inspect
    args = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is nn.Module:
            continue
        params = inspect.signature(init).parameters.values()
        args |= {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break  # it hands nothing more to its base
    fields = {f.name for f in dataclasses.fields(cls.config_class)} - {"type"}
    return args - set(cls.built_arguments) - fields, fields - set(cls.consumed_settings) - args


def test_every_head_constructor_argument_is_reachable_from_yaml():
    """Each registered head type: every constructor argument other than the ones ``from_config``
    builds is a settings field, and every settings field but ``type`` and the consumed ones is a
    constructor argument, so ``settings_kwargs`` hands on all of them."""
    from detseg.modeling.heads import HEAD_TYPES
    assert {"fcn", "sliding_window", "rcnn", "region"} <= set(HEAD_TYPES)
    for type_name, cls in HEAD_TYPES.items():
        unreachable, unused = settings_gaps(cls)
        assert not unreachable, f"{type_name}: constructor arguments no YAML key sets: {unreachable}"
        assert not unused, f"{type_name}: settings no constructor argument takes: {unused}"


def test_the_parts_a_head_builds_are_reachable_from_yaml_too():
    """The mask branch from ``mask:``, the RPN from ``proposals:`` (its maps, strides and channels
    come from the backbone)."""
    import dataclasses
    import inspect

    from detseg.modeling.proposals import RPN, ProposalConfig

    def keyword_args(cls):
        return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY}

    assert keyword_args(MaskHead) - {"in_shapes", "num_classes"} == {f.name for f in dataclasses.fields(MaskConfig)}
    proposal_keys = {f.name for f in dataclasses.fields(ProposalConfig)}
    assert keyword_args(RPN) - {"in_channels", "features", "strides"} <= proposal_keys


def test_the_reachability_walk_finds_a_gap():
    """The walk fails on a head whose constructor has an argument its settings lack, and on a
    setting no argument takes."""
    from dataclasses import dataclass

    from detseg.modeling.heads import FCNHead, FCNHeadConfig

    @dataclass
    class WiderConfig(FCNHeadConfig):
        unused: int = 0

    class Gap(FCNHead):
        config_class = WiderConfig

        def __init__(self, *, extra: int = 1, **kwargs):
            super().__init__(**kwargs)

    assert settings_gaps(Gap) == ({"extra"}, {"unused"})
    assert settings_gaps(FCNHead) == (set(), set())


def test_each_built_in_head_type_lives_in_the_file_named_after_it():
    """``type: region`` is heads/region.py's head, and so on; a file of heads/ builds no type of
    another name (the helpers there build no head type at all)."""
    import inspect

    from detseg.modeling import heads
    from detseg.modeling.heads import HEAD_TYPES
    built = {"fcn", "sliding_window", "rcnn", "region"}
    for type_name in built:
        assert os.path.basename(inspect.getfile(HEAD_TYPES[type_name])) == f"{type_name}.py"
    folder = os.path.dirname(inspect.getfile(heads))
    for name in os.listdir(folder):
        stem = name.removesuffix(".py")
        kinds = {t for t in built if os.path.basename(inspect.getfile(HEAD_TYPES[t])) == name}
        assert kinds <= {stem}, f"heads/{name} builds {kinds}"


def test_fast_rcnn_has_one_way_to_be_written():
    """A one-level SPP with Fast R-CNN's mapping is RoI pooling; the config says to write that."""
    with pytest.raises(ConfigError, match=r"write \{type: roi_pool, output_size: 7\}"):
        build_model(load_config(os.path.join(ROOT, "configs/fast_rcnn_resnet18_shapes.yaml"),
                                ["model.heads.det.pooler={type: spp, levels: [7], mapping: fast_rcnn}"]), 3)
    spp = load_config(os.path.join(ROOT, "configs/fast_rcnn_resnet18_shapes.yaml"),
                      ["model.heads.det.pooler={type: spp, levels: [7]}"])  # SPPNet's own mapping: fine
    assert build_model(spp, 3).heads["det"].pooler.out_features == 128 * 49
