"""The training loop: schedule, optimisation, hooks (evaluation, checkpoints, early stopping,
metrics log, curves), resume.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError
from . import checkpoint as ckpt
from . import distributed as dist
from .freeze import PartFreezer
from .memory import keep_freed_memory

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def lr_factor(it: int, solver) -> float:
    """Schedule multiplier at iteration ``it``: linear warmup, then step / cosine / constant."""
    if solver.schedule == "step":
        f = solver.gamma ** sum(it >= s for s in solver.steps)
    elif solver.schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * min(it, solver.max_iter) / max(1, solver.max_iter)))
    else:
        f = 1.0
    if it < solver.warmup_iters:
        alpha = it / max(1, solver.warmup_iters)
        f *= solver.warmup_factor * (1 - alpha) + alpha
    return f


def build_optimizer(model: torch.nn.Module, solver) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if solver.optimizer == "sgd":
        return torch.optim.SGD(params, lr=solver.lr, momentum=solver.momentum,
                               weight_decay=solver.weight_decay)
    # The fused kernel updates every tensor in one pass instead of about ten tensor ops per
    # parameter: 9 ms against 39 ms a step for the shapes Faster R-CNN (86 tensors, 19 M values)
    # on a 2-core CPU, about 8% of its bfloat16 step. The update is the same up to rounding.
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                 for p in params)
    return torch.optim.AdamW(params, lr=solver.lr, weight_decay=solver.weight_decay,
                             fused=True if fused else None)


class EarlyStop(Exception):
    pass


class Trainer:
    """Train ``model`` on ``train_loader`` for ``cfg.solver.max_iter`` iterations.

    Args:
        cfg: resolved ``Config``.
        model: a ``Model``.
        make_train_loader: ``start_iter -> DataLoader`` (an infinite, resumable stream).
        evaluate: ``model -> {metric: float}`` or None.
        output_dir: run folder (checkpoints, metrics.jsonl, curves.png).
        meta: plain values saved in every checkpoint (class names, label map, ...).
    """

    def __init__(self, cfg, model, make_train_loader: Callable[[int], object],
                 evaluate: Optional[Callable[[torch.nn.Module], dict]], output_dir: str, meta: dict):
        self.cfg, self.s = cfg, cfg.solver
        keep_freed_memory()  # no page faults on each step's large temporaries (see memory.py)
        self.device = torch.device(_pick_device(cfg.runtime.device))
        self.model = model.to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.s.channels_last:  # faster convolutions on CUDA and with oneDNN on CPU
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.s)
        # Built after the optimizer, which then holds the parts frozen for a while, too.
        self.freezer = (PartFreezer(self.model, self.s.freeze.parts, self.s.freeze.iters)
                        if self.s.freeze.parts and self.s.freeze.iters else None)
        self.train_model = self._wrap()
        self.amp_dtype = _amp_dtype(self.s, self.device)
        # Loss scaling only for float16: bfloat16 has float32's exponent range.
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.cuda and self.amp_dtype == torch.float16)
        self.make_train_loader = make_train_loader
        self.evaluate = evaluate
        self.output_dir = output_dir
        self.meta = meta
        self.iter = 0
        self.best: Optional[float] = None
        self.bad_evals = 0  # evaluations without improvement (early stopping)
        self.plateau_scale = 1.0
        self.plateau_bad = 0
        os.makedirs(output_dir, exist_ok=True)
        if dist.is_main() and (n := ckpt.remove_partial_writes(output_dir)):
            logger.warning("removed %d unfinished file write(s) a killed run left in %s", n, output_dir)
        self.metrics_path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = _tensorboard_writer(output_dir) if dist.is_main() else None

    def _wrap(self) -> torch.nn.Module:
        """The module the forward/backward runs through: under torchrun a DDP wrapper (built
        anew whenever the set of trainable parameters changes, as DDP fixes it at
        construction); self.model stays the plain module for checkpoints and evaluation."""
        if dist.world_size() == 1:
            return self.model
        return torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.cuda else None,
            find_unused_parameters=False)

    def _train_mode(self) -> None:
        self.model.train()
        if self.freezer is not None:
            self.freezer.hold_norms()

    def _apply_freeze(self) -> None:
        if self.freezer is not None and self.freezer.update(self.iter) and dist.world_size() > 1:
            self.train_model = self._wrap()

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        from ..config import to_dict
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "iteration": self.iter,
            "scheduler": {"plateau_scale": self.plateau_scale, "plateau_bad": self.plateau_bad},
            "best_metric": self.best, "bad_evals": self.bad_evals, "rng": ckpt.rng_state(),
            "config": to_dict(self.cfg), **self.meta,
        }

    def save(self, name: Optional[str] = None) -> str:
        path = os.path.join(self.output_dir, name or f"model_{self.iter:07d}.pth")
        if dist.is_main():  # only rank 0 writes
            try:
                ckpt.save_atomic(self.state(), path)
            except OSError as e:  # a full disk, a folder made read-only mid-run
                raise ckpt.CheckpointError(
                    f"{path}: could not write the checkpoint ({e.strerror or type(e).__name__}); the "
                    f"checkpoints already in {self.output_dir} are intact") from None
            if name is None:
                ckpt.prune(self.output_dir, keep=self.s.keep_last)
        return path

    def resume(self) -> bool:
        found = ckpt.newest_loadable(self.output_dir)
        if found is None:
            return False
        path, state = found
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise ckpt.CheckpointError(
                f"{path}: --resume: the checkpoint is of another model than this config builds "
                f"({ckpt.fit_report(self.model, state['model'])}). Train into a new "
                f"--output-dir, or start from this checkpoint's weights with --init-from") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iter = int(state["iteration"])
        self.best = state["best_metric"]
        self.bad_evals = int(state["bad_evals"])
        self.plateau_scale = float(state["scheduler"]["plateau_scale"])
        self.plateau_bad = int(state["scheduler"]["plateau_bad"])
        ckpt.set_rng_state(state["rng"])
        self._trim_metrics()
        logger.info("resumed from %s at iteration %d", path, self.iter)
        return True

    def start_metrics(self) -> None:
        """A fresh start (no ``--resume``): rows an earlier, killed start of this run logged are
        dropped, so that each iteration is logged once."""
        self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Drop the metrics rows logged after the checkpoint resumed from (the resumed run logs
        those iterations again) and a torn last line."""
        if not dist.is_main() or not os.path.exists(self.metrics_path):
            return
        kept = []
        with open(self.metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(row.get("iter", 0)) <= self.iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
        from ..utils import atomic_write
        with atomic_write(self.metrics_path, "w") as f:
            f.writelines(kept)

    # -- logging -----------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not dist.is_main():
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record.get("iter", 0))
            self.tb.flush()

    # -- evaluation hooks --------------------------------------------------------------------
    def run_eval(self) -> Optional[dict]:
        if self.evaluate is None:
            return None
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model)
        self._train_mode()
        self.log({"iter": self.iter, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        value = metrics.get(self.s.best_metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return metrics
        better = self.best is None or (value > self.best if self.s.best_mode == "max" else value < self.best)
        if better:
            self.best, self.bad_evals, self.plateau_bad = value, 0, 0
            self.save("best.pth")
            self._write_diagnostics(metrics)
        else:
            self.bad_evals += 1
            self.plateau_bad += 1
            if self.s.plateau and self.plateau_bad >= self.s.plateau_patience:
                self.plateau_scale *= self.s.plateau_factor
                self.plateau_bad = 0
                logger.info("metric plateaued: lr scaled by %g", self.plateau_scale)
            if self.s.patience is not None and self.bad_evals >= self.s.patience:
                raise EarlyStop(f"{self.s.best_metric} did not improve for {self.bad_evals} evaluations")
        return metrics

    def _write_diagnostics(self, metrics: dict) -> None:
        """The best checkpoint's figures and numbers in ``diagnostics/`` (evaluation.diagnostics)."""
        if not dist.is_main() or not any(k.endswith("diagnostics") for k in metrics):
            return
        from ..utils import write_json_atomic
        from ..visualize import write_diagnostics
        folder = os.path.join(self.output_dir, "diagnostics")
        write_diagnostics(metrics, folder)
        numbers = {k: v for k, v in metrics.items() if k.endswith("diagnostics")}
        write_json_atomic({"iter": self.iter, **numbers}, os.path.join(folder, "diagnostics.json"))

    # -- the loop ----------------------------------------------------------------------------
    def train(self, stop_at: Optional[int] = None) -> dict:
        """Run to ``max_iter`` (or early stop). Returns the last evaluation's metrics.

        Args:
            stop_at: leave the loop once this iteration is done, as a killed run would (the
                schedule still runs to ``max_iter``); for tests and time-sliced jobs.
        """
        s = self.s
        self._train_mode()
        loader = iter(self.make_train_loader(self.iter))
        bar = tqdm(total=s.max_iter, initial=self.iter, desc="train", dynamic_ncols=True,
                   disable=os.environ.get("DETSEG_NO_PROGRESS") == "1" or not dist.is_main())
        last_eval: Optional[dict] = None
        t_start = time.perf_counter()
        try:
            while self.iter < s.max_iter:
                batch = next(loader)
                if not batch.image_ids:
                    continue  # every image of this batch was skipped as unreadable
                self._apply_freeze()
                lr = s.lr * lr_factor(self.iter, s) * self.plateau_scale
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with torch.autocast(self.device.type, dtype=self.amp_dtype,
                                    enabled=self.amp_dtype is not None):
                    losses = self.train_model(batch)
                loss = losses["loss"]
                finite = torch.isfinite(loss.detach()).float()
                if dist.world_size() > 1:  # every rank stops together, none hangs in a reduce
                    finite = dist.all_reduce_sum(finite.cpu()) / dist.world_size()
                if float(finite) < 1:
                    raise FloatingPointError(
                        f"loss became {loss.item()} at iteration {self.iter} on images "
                        f"{batch['image_ids']}; stopping. The last good checkpoint in "
                        f"{self.output_dir} is untouched.")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if s.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.iter += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2g}")
                if self.iter % s.log_period == 0 or self.iter == s.max_iter:
                    self.log({"iter": self.iter, "lr": lr, "time": time.perf_counter() - t_start,
                              **{k: v.item() for k, v in losses.items()}})
                if self.iter % s.checkpoint_period == 0 or self.iter == s.max_iter:
                    self.save()
                if self.iter % s.eval_period == 0 or self.iter == s.max_iter:
                    last_eval = self.run_eval()
                if stop_at is not None and self.iter >= stop_at:
                    break
        except EarlyStop as e:
            logger.info("early stopping at iteration %d: %s", self.iter, e)
            self.save()
        finally:
            bar.close()
        if dist.world_size() > 1:
            if not dist.params_identical(self.model):
                raise RuntimeError("parameters differ between ranks after training")
            logger.info("parameters identical on all %d ranks", dist.world_size())
        if dist.is_main():
            from ..visualize import plot_curves
            plot_curves(self.metrics_path, os.path.join(self.output_dir, "curves.png"))
        return last_eval or {}


def _tensorboard_writer(output_dir: str):
    """A TensorBoard SummaryWriter into ``<output_dir>/tb`` (tensorboard is a dependency; a
    broken install is a warning, not a failed run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        logger.warning("TensorBoard logging off: %s (pip install tensorboard)", e)
        return None
    return SummaryWriter(os.path.join(output_dir, "tb"))


def _pick_device(device: str) -> str:
    device = dist.init(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _amp_dtype(s, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``solver.amp`` on ``device``, or None when AMP is off."""
    if not s.amp:
        return None
    if s.amp_dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    else:
        dtype = getattr(torch, s.amp_dtype)
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("solver.amp_dtype=float16 needs a CUDA device (on CPU use bfloat16 or auto)")
    if device.type == "cpu" and not _cpu_has_native_bf16():
        if s.amp_dtype == "auto":
            # Emulated bfloat16 convolutions: the FCN recipe's step went from 0.3 s to 7.5 s on
            # an AVX2-only CPU. "auto" means the fast choice, so here it is float32.
            logger.info("solver.amp: this CPU has no native bfloat16 (AVX512-BF16 / AMX); training "
                        "in float32, which is faster here (solver.amp_dtype=bfloat16 forces it)")
            return None
        logger.warning("solver.amp_dtype=bfloat16: this CPU has no native bfloat16 (AVX512-BF16 / "
                       "AMX); autocast is emulated and much slower than float32 here")
    return dtype


def _cpu_has_native_bf16() -> bool:
    try:  # a private oneDNN probe; assume support when the probe is missing
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True
