import json
import os

import pytest
import torch

from detseg.config import load_config
from detseg.data.build import build_dataset, build_train_loader
from detseg.engine.checkpoint import load_checkpoint
from detseg.engine.trainer import Trainer, seed_everything
from detseg.modeling.model import build_model


def small_cfg(out, *extra):
    return load_config(None, [
        "data.batch_size=2", "data.num_workers=0", "data.min_size_train=[64, 80]",
        "data.min_size_test=64", "data.max_size=96", "solver.lr=0.01", "solver.warmup_iters=3",
        "solver.checkpoint_period=10", "solver.eval_period=1000", "solver.log_period=5",
        "runtime.deterministic=true", f"runtime.output_dir={out}", *extra])


def make_trainer(cfg, shapes_data, evaluate=None):
    seed_everything(cfg.runtime.seed, True)
    ds = build_dataset(cfg, shapes_data["train"], train=True, with_semantic=True)
    model = build_model(cfg, ds.num_classes)
    return Trainer(cfg, model, lambda start: build_train_loader(cfg, ds, start), evaluate,
                   cfg.runtime.output_dir, {"class_names": ds.class_names})


def test_resume_is_exact(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    straight = make_trainer(small_cfg(tmp_path / "a", "solver.max_iter=20"), shapes_data)
    straight.train()

    first = make_trainer(small_cfg(tmp_path / "b", "solver.max_iter=20"), shapes_data)
    first.train(stop_at=10)  # killed right after the iteration-10 checkpoint
    second = make_trainer(small_cfg(tmp_path / "b", "solver.max_iter=20"), shapes_data)
    assert second.resume() and second.iter == 10
    second.train()
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from a straight run"
    # And the run actually changed the weights (the comparison is not trivially true).
    fresh = make_trainer(small_cfg(tmp_path / "c", "solver.max_iter=20"), shapes_data).model.state_dict()
    assert not all(torch.equal(a[k], fresh[k]) for k in a)


def test_best_checkpoint_and_early_stopping(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    scores = iter([0.2, 0.5, 0.4, 0.45, 0.3, 0.9])
    cfg = small_cfg(tmp_path / "e", "solver.max_iter=12", "solver.eval_period=2",
                    "solver.patience=3", "solver.checkpoint_period=100")
    trainer = make_trainer(cfg, shapes_data, evaluate=lambda m: {"mIoU": next(scores)})
    trainer.train()
    # Best 0.5 at the 2nd eval (iteration 4); three evals without improvement stop at iteration 10.
    assert trainer.iter == 10
    best = load_checkpoint(str(tmp_path / "e" / "best.pth"))
    assert best["iteration"] == 4 and best["best_metric"] == 0.5
    assert best["class_names"] and best["config"]["solver"]["patience"] == 3
    evals = [json.loads(line) for line in open(tmp_path / "e" / "metrics.jsonl") if "mIoU" in line]
    assert [e["mIoU"] for e in evals] == [0.2, 0.5, 0.4, 0.45, 0.3]
    assert os.path.exists(tmp_path / "e" / "curves.png")


def test_nan_loss_stops_with_image_ids_and_keeps_last_checkpoint(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    cfg = small_cfg(tmp_path / "n", "solver.max_iter=30", "solver.checkpoint_period=5")
    trainer = make_trainer(cfg, shapes_data)
    calls = {"n": 0}
    real_forward = trainer.model.forward

    def forward(batch):
        out = real_forward(batch)
        calls["n"] += 1
        if calls["n"] == 8:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", forward)
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    assert "iteration 7" in str(e.value) and "images [" in str(e.value)
    assert load_checkpoint(str(tmp_path / "n" / "model_0000005.pth"))["iteration"] == 5


def test_cpu_amp_trains_in_bfloat16_and_float16_needs_cuda(tmp_path, shapes_data, monkeypatch):
    from detseg.engine import trainer as trainer_module
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    # "auto" picks bfloat16 only where the CPU runs it natively; emulated it is ~25x slower.
    auto = small_cfg(tmp_path / "auto", "solver.max_iter=4", "solver.amp=true")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(trainer_module, "_cpu_has_native_bf16", lambda: native)
        assert trainer_module._amp_dtype(auto.solver, torch.device("cpu")) == expected
    cfg = small_cfg(tmp_path / "amp", "solver.max_iter=4", "solver.amp=true", "solver.amp_dtype=bfloat16")
    trainer = make_trainer(cfg, shapes_data)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen = []
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}  # the forward really ran under autocast
    after = trainer.model.state_dict()
    # Master weights stay float32 and were updated.
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert any(not torch.equal(after[k], before[k]) for k in before if after[k].is_floating_point())
    bad = small_cfg(tmp_path / "f16", "solver.amp=true", "solver.amp_dtype=float16")
    with pytest.raises(ValueError, match="amp_dtype=float16"):
        make_trainer(bad, shapes_data)


def test_validation_loss_is_logged_and_does_not_change_training(tmp_path, shapes_data, monkeypatch):
    """val_loss at each evaluation, in metrics.jsonl and TensorBoard; a run computing it trains
    to the very same weights as one that does not (no gradients, BatchNorm statistics untouched,
    proposal sampling on a forked random stream)."""
    from detseg.data.build import build_val_loader
    from detseg.evaluation.runner import make_evaluate
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    weights = {}
    for flag in ("true", "false"):
        cfg = small_cfg(tmp_path / flag, "solver.max_iter=4", "solver.eval_period=2",
                        f"evaluator.val_loss={flag}")
        val = build_dataset(cfg, shapes_data["val"], train=False, with_semantic=True)
        evaluate = make_evaluate(cfg, val, build_val_loader(cfg, val), None)
        trainer = make_trainer(cfg, shapes_data, evaluate)
        trainer.train()
        weights[flag] = trainer.model.state_dict()
    assert all(torch.equal(weights["true"][k], weights["false"][k]) for k in weights["true"])
    evals = [json.loads(x) for x in open(tmp_path / "true" / "metrics.jsonl") if "mIoU" in x]
    assert [e["iter"] for e in evals] == [2, 4] and all(e["val_loss"] > 0 for e in evals)
    assert not any("val_loss" in x for x in open(tmp_path / "false" / "metrics.jsonl"))
    # The best checkpoint's diagnostics: the semantic confusion matrix, as numbers and a figure.
    diag = json.load(open(tmp_path / "true" / "diagnostics" / "diagnostics.json"))
    assert len(diag["diagnostics"]["confusion"]) == 5
    assert os.path.exists(tmp_path / "true" / "diagnostics" / "semantic_confusion.png")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "true" / "tb"))
    events.Reload()
    assert [s.step for s in events.Scalars("val_loss")] == [2, 4]
    assert len(events.Scalars("loss")) >= 1


def test_adamw_is_fused_and_updates_as_the_reference_does():
    """build_optimizer's fused AdamW (one kernel a step) takes the same steps as torch's
    per-parameter loop, and a state saved by the loop version (older checkpoints) loads into it."""
    from types import SimpleNamespace

    from detseg.engine.trainer import build_optimizer
    solver = SimpleNamespace(optimizer="adamw", lr=1e-2, weight_decay=1e-2)
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    start = a[0].weight.detach().clone()
    fused = build_optimizer(a, solver)
    loop = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-2, foreach=False)
    assert fused.param_groups[0]["fused"] is True
    x = torch.randn(16, 5)
    for _ in range(5):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a[0].weight, start)  # it did move
    resumed = build_optimizer(b, solver)
    resumed.load_state_dict(loop.state_dict())
    resumed.step()  # the loop state's moments drive the fused kernel
    assert resumed.state[next(iter(b.parameters()))]["step"].item() == 6


def test_a_hook_of_ones_own_runs_without_editing_the_trainer(tmp_path, shapes_data, monkeypatch):
    """A user's hook sees every step and evaluation, keeps state in the checkpoints, and reads it
    back on resume; the plateau hook scales the learning rate the loop uses."""
    from detseg.engine.hooks import HookBase, PlateauSchedule

    class Recorder(HookBase):
        def __init__(self):
            self.steps, self.evals, self.lrs = [], [], []

        def after_step(self):
            self.steps.append(self.trainer.iter)
            self.lrs.append(self.trainer.lr)

        def after_eval(self, metrics, improved):
            self.evals.append((self.trainer.iter, improved))

        def state_dict(self):
            return {"recorder_steps": len(self.steps)}

        def load_state_dict(self, state):
            self.restored = state["recorder_steps"]

    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    scores = iter([0.5, 0.4, 0.3, 0.2])
    cfg = small_cfg(tmp_path / "h", "solver.max_iter=8", "solver.eval_period=2", "solver.schedule=constant",
                    "solver.warmup_iters=0", "solver.plateau=true", "solver.plateau_patience=2",
                    "solver.plateau_factor=0.5", "solver.checkpoint_period=4")
    trainer = make_trainer(cfg, shapes_data, evaluate=lambda m: {"mIoU": next(scores)})
    recorder = Recorder()
    trainer.register_hooks([recorder])
    trainer.train()
    assert recorder.steps == list(range(1, 9))
    assert recorder.evals == [(2, True), (4, False), (6, False), (8, False)]
    # two evaluations without improvement (iterations 4, 6) halve the rate from iteration 7 on
    assert recorder.lrs == [0.01] * 6 + [0.005] * 2
    assert trainer.hook(PlateauSchedule).scale == 0.5
    # hooks run in order: the checkpointer wrote iteration 8's file before the recorder saw step 8
    state = load_checkpoint(str(tmp_path / "h" / "model_0000008.pth"))
    assert state["recorder_steps"] == 7 and state["scheduler"]["plateau_scale"] == 0.5
    again = make_trainer(cfg, shapes_data)
    again.register_hooks([Recorder()])
    assert again.resume() and again.hooks[-1].restored == 7 and again.lr_scale == 0.5
