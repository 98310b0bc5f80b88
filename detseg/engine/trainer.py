"""The training loop: schedule, optimisation, resume; evaluation, checkpoints, early stopping,
the plateau schedule and the metrics log are hooks (``detseg.engine.hooks``).
"""
from __future__ import annotations

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
from .. import comm as dist
from .freeze import PartFreezer
from .hooks import EarlyStop, EvalHook, default_hooks
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


class Trainer:
    """Train ``model`` on ``train_loader`` for ``cfg.solver.max_iter`` iterations.

    The loop itself runs the optimisation step; everything around it is a hook
    (``detseg.engine.hooks``, detectron2's ``HookBase`` manner): the metrics log with
    TensorBoard and curves, periodic checkpoints, evaluation with the best checkpoint and early
    stopping, the plateau schedule. ``register_hooks`` adds one's own.

    Args:
        cfg: resolved ``Config``.
        model: a ``Model``.
        make_train_loader: ``start_iter -> DataLoader`` (an infinite, resumable stream).
        evaluate: ``model -> {metric: float}`` or None.
        output_dir: run folder (checkpoints, metrics.jsonl, curves.png).
        meta: plain values saved in every checkpoint (class names, label map, ...).
        hooks: hooks to run instead of ``default_hooks(cfg, evaluate)``.
    """

    def __init__(self, cfg, model, make_train_loader: Callable[[int], object],
                 evaluate: Optional[Callable[[torch.nn.Module], dict]], output_dir: str, meta: dict,
                 hooks: Optional[list] = None):
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
        self.lr_scale = 1.0  # a hook's multiplier of the schedule's learning rate (plateau)
        # what the last step left for the hooks: its learning rate and losses, seconds since start
        self.lr: float = 0.0
        self.losses: dict = {}
        self.elapsed = 0.0
        os.makedirs(output_dir, exist_ok=True)
        if dist.is_main() and (n := ckpt.remove_partial_writes(output_dir)):
            logger.warning("removed %d unfinished file write(s) a killed run left in %s", n, output_dir)
        self.hooks: list = []
        self.register_hooks(default_hooks(cfg, evaluate) if hooks is None else hooks)

    def register_hooks(self, hooks: list) -> None:
        """Add hooks (``detseg.engine.hooks.HookBase``), run in the order given after the ones
        already registered."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def hook(self, kind: type):
        """The registered hook of class ``kind``, or None."""
        return next((h for h in self.hooks if isinstance(h, kind)), None)

    def _wrap(self) -> torch.nn.Module:
        """The module the forward/backward runs through: under torchrun a DDP wrapper (built
        anew whenever the set of trainable parameters changes, as DDP fixes it at
        construction); self.model stays the plain module for checkpoints and evaluation."""
        if dist.world_size() == 1:
            return self.model
        return torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.cuda else None,
            find_unused_parameters=False)

    def train_mode(self) -> None:
        """The model back in training mode (frozen parts' norm layers held in eval)."""
        self.model.train()
        if self.freezer is not None:
            self.freezer.hold_norms()

    def _apply_freeze(self) -> None:
        if self.freezer is not None and self.freezer.update(self.iter) and dist.world_size() > 1:
            self.train_model = self._wrap()

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """What a checkpoint holds: the model, optimisation state, RNG, config, ``meta`` and
        every hook's ``state_dict()``."""
        from ..config import to_dict
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "iteration": self.iter}
        for hook in self.hooks:
            state.update(hook.state_dict())
        return {**state, "rng": ckpt.rng_state(), "config": to_dict(self.cfg), **self.meta}

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
        for hook in self.hooks:
            hook.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        for hook in self.hooks:
            hook.after_restore()
        logger.info("resumed from %s at iteration %d", path, self.iter)
        return True

    def start_metrics(self) -> None:
        """A fresh start (no ``--resume``): each hook forgets what an earlier, killed start of
        this run left (the metrics log drops its rows, so that each iteration is logged once)."""
        for hook in self.hooks:
            hook.after_restore()

    # -- what hooks report -------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """A metrics record (``{"iter": i, name: number, ...}``) for every hook that keeps them."""
        for hook in self.hooks:
            hook.write(record)

    def after_eval(self, metrics: dict, improved: Optional[bool]) -> None:
        """Tell the hooks an evaluation ran (``improved``: of the best metric; None: no such metric)."""
        for hook in self.hooks:
            hook.after_eval(metrics, improved)

    # -- the loop ----------------------------------------------------------------------------
    def train(self, stop_at: Optional[int] = None) -> dict:
        """Run to ``max_iter`` (or early stop). Returns the last evaluation's metrics.

        Args:
            stop_at: leave the loop once this iteration is done, as a killed run would (the
                schedule still runs to ``max_iter``); for tests and time-sliced jobs.
        """
        s = self.s
        self.train_mode()
        loader = iter(self.make_train_loader(self.iter))
        bar = tqdm(total=s.max_iter, initial=self.iter, desc="train", dynamic_ncols=True,
                   disable=os.environ.get("DETSEG_NO_PROGRESS") == "1" or not dist.is_main())
        for hook in self.hooks:
            hook.before_train()
        t_start = time.perf_counter()
        try:
            while self.iter < s.max_iter:
                batch = next(loader)
                if not batch.image_ids:
                    continue  # every image of this batch was skipped as unreadable
                self._apply_freeze()
                self.lr = s.lr * lr_factor(self.iter, s) * self.lr_scale
                for g in self.optimizer.param_groups:
                    g["lr"] = self.lr
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
                        f"{batch.image_ids}; stopping. The last good checkpoint in "
                        f"{self.output_dir} is untouched.")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if s.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.iter += 1
                self.losses, self.elapsed = losses, time.perf_counter() - t_start
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.lr:.2g}")
                for hook in self.hooks:
                    hook.after_step()
                if bar.total != s.max_iter:  # a time budget fitted the run's length
                    bar.total = s.max_iter
                    bar.refresh()
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
        for hook in self.hooks:
            hook.after_train()
        evaluation = self.hook(EvalHook)
        return (evaluation.last if evaluation is not None else None) or {}


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
