"""The head protocol: what a head reads and what it returns, declared once on its class, so that
``Model``, evaluation, export, fine-tuning, the API and the tools dispatch on it and never on a
head's name or its attributes."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torch import Tensor, nn

from ..class_layout import DeclaresClassAxes

INSTANCES = "instances"  # forward_test -> list[Instances], one per image (boxes, maybe masks)
SEMANTIC = "semantic"  # forward_test -> Tensor[B, K + 1, H, W] class logits at the padded size
CLASSES = "classes"  # forward_test -> Tensor[B, K] class probabilities, one row per image
# The key under which a predictor's result dict holds the first head of each output kind (the
# eager Predictor's and the exported one's alike).
RESULT_KEYS = {INSTANCES: "instances", SEMANTIC: "semantic", CLASSES: "classes"}


class Head(nn.Module, DeclaresClassAxes):
    """Base class of every head.

    Class attributes a head sets:
        output: ``INSTANCES``, ``SEMANTIC`` or ``CLASSES`` (what ``forward_test`` returns, see above).
        needs_features: reads the shared full-image backbone features (``Model`` runs the
            backbone once per batch when any head does).
        uses_backbone: runs the backbone itself on inputs of its own (R-CNN's warped crops, the
            sliding window's padded image); ``Model`` then calls it with ``backbone=``.
        config_class: its settings dataclass (beside the head), whose ``type`` names the head type
            in ``model.heads``; registered with ``register_head``.
        built_arguments: constructor arguments that ``from_config`` builds (modules, the class
            count, the backbone's shapes), not settings; every other argument is a setting of the
            same name (``settings_kwargs``), so YAML reaches all of them.
        consumed_settings: settings ``from_config`` turns into built arguments (``proposals``
            becomes the proposal module) rather than passing on.

    Methods:
        ``forward_train(features, batch, **kw) -> {loss name: scalar Tensor}`` (loss names unique
        across the model's heads: prefix them with something head-specific),
        ``forward_test(features, batch, **kw)`` -> see ``output``,
        ``from_config(settings, backbone, num_classes)`` builds one from its settings.
        ``features``: ``{name: Tensor[B, C, h, w]}`` or None; ``batch``: the collated
        ``detseg.structures.Batch`` (read by attribute) with ``pixels`` (normalised images
        ``[B, 3, H, W]``) added by ``Model``.
        ``parts()``, ``class_axes()``, ``predicts_masks``, ``proposal_source()``, ``set_export_mode()``: what ``Model``,
        fine-tuning and export need to know of it (defaults below).
    """

    output: str = INSTANCES
    needs_features: bool = True
    uses_backbone: bool = False
    config_class: Optional[type] = None
    built_arguments: tuple[str, ...] = ("in_shapes", "num_classes")
    consumed_settings: tuple[str, ...] = ()
    # True while export traces the head: a graph must not loop a data-dependent number of times
    exporting: bool = False

    @property
    def predicts_masks(self) -> bool:
        """Its instances carry masks (``predicts_masks_for`` asks the same of settings)."""
        return False

    def parts(self) -> dict[str, str]:
        """Named sub-parts that freezing addresses across heads: ``{part: module path within the
        head}`` (``"rpn"``: a learnt proposal network, ``"mask"``: a mask branch); {}: none."""
        return {}

    def proposal_source(self) -> Optional[nn.Module]:
        """The module its proposals come from (``detseg.modeling.proposals``), when it reads
        proposals: export gives a selective-search head's proposals as a graph input."""
        return None

    def set_export_mode(self, on: bool) -> None:
        """Switch to (or back from) the head's export form; ``detseg.export`` calls it around
        tracing. The base form sets ``exporting``, which a head reads where its eager code splits
        work by data-dependent sizes (R-CNN's crop chunks, the window shapes an image fits)."""
        self.exporting = on

    # What the data pipeline must provide for a head of this type, known before the model is
    # built (the class count comes from the dataset).
    @classmethod
    def predicts_masks_for(cls, settings: Any) -> bool:
        """``predicts_masks`` of the head these settings build: its training targets need
        instance masks."""
        return False

    @classmethod
    def proposal_settings(cls, settings: Any) -> Optional[Any]:
        """Its ``ProposalConfig`` when it reads proposals (selective-search caches come from the
        data pipeline), else None."""
        return None

    @classmethod
    def settings_kwargs(cls, settings: Any) -> dict:
        """The constructor's keyword arguments that ``settings`` holds as they are: every field
        but ``type`` and ``consumed_settings``."""
        skip = {"type", *cls.consumed_settings}
        return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in skip}

    @classmethod
    def from_config(cls, settings: Any, backbone: nn.Module, num_classes: int) -> "Head":
        raise NotImplementedError(f"{cls.__name__} has no from_config")

    def forward_train(self, features: Optional[dict], batch, **kwargs) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward_test(self, features: Optional[dict], batch, **kwargs):
        raise NotImplementedError
