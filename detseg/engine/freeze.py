"""Keep named parts of a model frozen for the first iterations of a run (``solver.freeze``).

Fine-tuning from a trained detector often starts with the backbone (and FPN, RPN) frozen while
the freshly initialised class layers settle, then trains everything. Frozen parts get no
gradients (``requires_grad`` off, so their backward is not computed either) and their
BatchNorm layers stay in eval mode, so that their running statistics do not drift.
"""
from __future__ import annotations

import logging

from torch import nn

from ..config import ConfigError

logger = logging.getLogger(__name__)


def resolve_parts(model: nn.Module, names: list[str]) -> list[str]:
    """Module paths of the named parts: a name of ``model.parts()`` or any module path.

    Raises:
        ConfigError: a name that is neither (the message lists the part names).
    """
    known = model.parts() if hasattr(model, "parts") else {}
    modules = dict(model.named_modules())
    paths: list[str] = []
    for name in names:
        if name in known:
            paths += known[name]
        elif name in modules and name:
            paths.append(name)
        else:
            raise ConfigError(f"solver.freeze.parts: {name!r} is not a part of this model; one of "
                              f"{', '.join(known)} or a module path such as heads.<name>.fc")
    return list(dict.fromkeys(paths))


class PartFreezer:
    """Freezes ``parts`` of ``model`` while ``iteration < iters``.

    Only parameters that were trainable when it was built are touched: layers frozen for good
    (``model.backbone.freeze_at``) stay frozen after the period ends.
    """

    def __init__(self, model: nn.Module, parts: list[str], iters: int):
        self.model, self.iters = model, iters
        self.paths = resolve_parts(model, parts)
        self.modules = [model.get_submodule(p) for p in self.paths]
        self.params = list({id(p): p for m in self.modules for p in m.parameters()
                            if p.requires_grad}.values())
        self.frozen = False

    def update(self, iteration: int) -> bool:
        """Freeze or unfreeze for ``iteration``; True when that changed which parameters train."""
        want = iteration < self.iters and bool(self.params)
        if want == self.frozen:
            return False
        for p in self.params:
            p.requires_grad_(not want)
        self.frozen = want
        n = sum(p.numel() for p in self.params)
        if want:
            logger.info("freezing %s (%d parameters) until iteration %d", ", ".join(self.paths), n,
                        self.iters)
        else:
            logger.info("iteration %d: unfreezing %s (%d parameters); training everything", iteration,
                        ", ".join(self.paths), n)
        self.hold_norms()
        return True

    def hold_norms(self) -> None:
        """Frozen parts' BatchNorm layers in eval mode, else in the model's mode (call after
        ``model.train()``)."""
        for m in self.modules:
            for layer in m.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.train(self.model.training and not self.frozen)
