"""solver.freeze: named parts stay exactly as they were for the first iterations, then train."""
import pytest
import torch

from detseg.config import ConfigError
from detseg.engine.freeze import resolve_parts
from tests.engine.test_trainer import make_trainer, small_cfg


def test_frozen_parts_do_not_move_until_the_period_ends(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    cfg = small_cfg(tmp_path / "f", "solver.max_iter=6", "solver.freeze.parts=[backbone]",
                    "solver.freeze.iters=3", "model.backbone.freeze_at=1")
    trainer = make_trainer(cfg, shapes_data)
    model = trainer.model
    stem = [p for p in model.backbone.stages["stem"].parameters()]
    assert stem and not any(p.requires_grad for p in stem)  # freeze_at: frozen for good
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train(stop_at=3)
    after = model.state_dict()
    backbone = [k for k in after if k.startswith("backbone.")]
    # Weights and BatchNorm running statistics alike: the frozen part's norms ran in eval mode.
    assert all(torch.equal(after[k], before[k]) for k in backbone)
    assert not all(torch.equal(after[k], before[k]) for k in after if k.startswith("heads."))
    trainer.train()  # iterations 4-6: the backbone trains too
    after = model.state_dict()
    changed = [k for k in backbone if not torch.equal(after[k], before[k])]
    assert any(k.endswith("conv1.weight") for k in changed) and any("running_mean" in k for k in changed)
    # The stem's weights stay frozen for good (its BatchNorm statistics are freeze_at's business).
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], before[k]) for k in params if k.startswith("backbone.stages.stem."))
    assert not any(p.requires_grad for p in stem)


def test_part_names_resolve_and_unknown_ones_are_config_errors():
    from detseg.config import load_config
    from detseg.modeling.model import build_model
    model = build_model(load_config("configs/mask_rcnn_resnet18_fpn_shapes.yaml"), 4)
    assert resolve_parts(model, ["backbone", "fpn", "rpn", "mask"]) == [
        "backbone.body", "backbone.fpn", "heads.det.proposals", "heads.det.mask_head"]
    assert resolve_parts(model, ["heads.det.fc", "det"]) == ["heads.det.fc", "heads.det"]
    with pytest.raises(ConfigError, match="'neck' is not a part of this model; one of backbone, fpn"):
        resolve_parts(model, ["neck"])
