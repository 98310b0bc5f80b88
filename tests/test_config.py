import glob
import os
import re

import pytest
import yaml

from detseg.config import Config, ConfigError, load_config, to_yaml
from tests.conftest import ROOT


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides_parse_to_field_types():
    cfg = load_config(None, ["solver.max_iter=20", "solver.lr=1e-3", "data.batch_size=2",
                             "runtime.deterministic=true", "data.min_size_train=[100, 120]",
                             "solver.clip_grad_norm=5", "runtime.output_dir=/tmp/x"])
    assert cfg.solver.max_iter == 20 and isinstance(cfg.solver.max_iter, int)
    assert cfg.solver.lr == pytest.approx(1e-3) and isinstance(cfg.solver.lr, float)
    assert cfg.solver.clip_grad_norm == 5.0 and isinstance(cfg.solver.clip_grad_norm, float)
    assert cfg.runtime.deterministic is True
    assert cfg.data.min_size_train == [100, 120]
    assert cfg.runtime.output_dir == "/tmp/x"


def test_an_override_under_the_default_head_edits_that_head():
    cfg = load_config(None, ["model.heads.seg.head_norm=bn", "model.heads.seg.variant=16s"])
    seg = cfg.model.heads["seg"]
    assert (seg.type, seg.head_norm, seg.variant) == ("fcn", "bn", "16s")
    # a head of another name on the defaults still stands alone, and a full section replaces
    cfg = load_config(None, ["model.heads.cls={type: classify}"])
    assert list(cfg.model.heads) == ["cls"]
    cfg = load_config(None, ["model.heads.seg={type: classify}"])
    assert cfg.model.heads["seg"].type == "classify"
    with pytest.raises(ConfigError, match="head_nrom"):
        load_config(None, ["model.heads.seg.head_nrom=bn"])


def test_base_inheritance_and_provenance_in_errors(tmp_path):
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "a.yaml", "solver:\n  lr: 0.5\n  max_iter: 7\n")
    leaf = write(tmp_path / "leaf.yaml", "_base_: base/a.yaml\nsolver:\n  max_iter: 9\n")
    cfg = load_config(leaf)
    assert cfg.solver.lr == 0.5 and cfg.solver.max_iter == 9

    bad_base = write(tmp_path / "base" / "b.yaml", "solver:\n  lrr: 0.5\n")
    leaf2 = write(tmp_path / "leaf2.yaml", "_base_: base/b.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(leaf2)
    assert "solver.lrr" in str(e.value) and bad_base in str(e.value)


def test_wrong_type_names_key_and_source(tmp_path):
    leaf = write(tmp_path / "c.yaml", "data:\n  batch_size: two\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size.*c\.yaml.*expected int"):
        load_config(leaf)
    with pytest.raises(ConfigError, match=r"solver\.max_iter.*command line"):
        load_config(None, ["solver.max_iter=1.5"])
    with pytest.raises(ConfigError, match=r"solver\.optimizer.*one of 'sgd', 'adamw'"):
        load_config(None, ["solver.optimizer=adam"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.backbone\.nam'.*command line"):
        load_config(None, ["model.backbone.nam=vgg16"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["solver.max_iter"])


def test_base_depth_limit(tmp_path):
    write(tmp_path / "c.yaml", "{}\n")
    write(tmp_path / "b.yaml", "_base_: c.yaml\n")
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    load_config(str(tmp_path / "a.yaml"))  # depth 2 is allowed
    write(tmp_path / "z.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="deeper than 2"):
        load_config(str(tmp_path / "z.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    leaf = write(tmp_path / "evil.yaml", "solver: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(leaf)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """YAML keeps the last of two equal keys silently; a config file that repeats one (two
    ``data:`` blocks) would lose the first block's settings, so it is refused."""
    leaf = write(tmp_path / "twice.yaml", "data:\n  shapes: {num_train: 2000}\nsolver:\n  amp: true\n"
                 "data:\n  num_workers: 0\n")
    with pytest.raises(ConfigError, match=r"(?s)twice\.yaml.*found key 'data' twice \(first on line 1\)"
                                          r".*line 5"):
        load_config(leaf)
    nested = write(tmp_path / "nested.yaml", "solver: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ConfigError, match="found key 'lr' twice"):
        load_config(nested)
    # a << merge's keys may be overridden, as YAML intends
    merged = write(tmp_path / "merged.yaml", "x: &s {lr: 0.1, max_iter: 7}\nsolver: {<<: *s, lr: 0.2}\n")
    from detseg.yaml_tree import read_yaml
    assert read_yaml(merged)["solver"] == {"lr": 0.2, "max_iter": 7}


def test_printed_config_round_trips():
    cfg = load_config(None, ["solver.max_iter=33"])
    again = load_config(None)
    tree = yaml.safe_load(to_yaml(cfg))
    assert tree["solver"]["max_iter"] == 33
    from detseg.config import from_dict
    assert from_dict(tree) == cfg and cfg != again and isinstance(cfg, Config)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_loads_and_builds(path):
    from detseg.modeling.model import build_model
    # weights: none here (no download); everything else exactly as shipped
    cfg = load_config(path, ["model.backbone.weights=null"])
    model = build_model(cfg, num_classes=3)
    assert list(model.heads) == list(cfg.model.heads)


@pytest.mark.parametrize("override,message", [
    ("solver.lr=-0.01", "'solver.lr' (from command line): must be > 0, got -0.01"),
    ("solver.lr=nan", "'solver.lr' (from command line): must be > 0, got nan"),
    ("data.batch_size=0", "'data.batch_size' (from command line): must be >= 1"),
    ("data.num_workers=-1", "'data.num_workers' (from command line): must be >= 0"),
    ("solver.eval_period=0", "'solver.eval_period' (from command line): must be >= 1"),
    ("solver.max_iter=0", "'solver.max_iter' (from command line): must be >= 1"),
    ("data.min_size_test=0", "'data.min_size_test' (from command line): must be >= 16"),
    ("data.min_size_train=[128, 0]", "'data.min_size_train' (from command line): must be >= 16, got 0"),
    ("solver.momentum=1.5", "'solver.momentum' (from command line): must be >= 0 and <= 1"),
    ("data.shapes.imbalance=0.5", "'data.shapes.imbalance' (from command line): must be >= 1.0"),
])
def test_out_of_range_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_in_range_and_unset_values_load():
    cfg = load_config(None, ["solver.patience=null", "solver.clip_grad_norm=null", "data.num_workers=0",
                             "solver.lr=1e-5"])
    assert cfg.solver.patience is None and cfg.solver.clip_grad_norm is None and cfg.solver.lr == 1e-5


def test_a_head_field_out_of_range_is_refused_at_load():
    # the range check reaches into the heads' own dataclasses (here the mask branch of a region head)
    path = "configs/mask_rcnn_resnet18_fpn_shapes.yaml"
    with pytest.raises(ConfigError, match=re.escape("'model.heads.det.mask.rois_per_image' (from command "
                                                    "line): must be >= 1, got 0")):
        load_config(path, ["model.heads.det.mask.rois_per_image=0"])
    cfg = load_config(path, ["model.heads.det.mask.rois_per_image=8"])
    assert cfg.model.heads["det"].mask.rois_per_image == 8
