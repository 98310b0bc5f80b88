"""The head protocol: what a head reads and what it returns, declared once on its class, so that
``Model``, evaluation, the API and the tools dispatch on it and never on a head's name."""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

INSTANCES = "instances"  # forward_test -> list[Instances], one per image (boxes, maybe masks)
SEMANTIC = "semantic"  # forward_test -> Tensor[B, K + 1, H, W] class logits at the padded size


class Head(nn.Module):
    """Base class of every head.

    Class attributes a head sets:
        output: ``INSTANCES`` or ``SEMANTIC`` (what ``forward_test`` returns, see above).
        needs_features: reads the shared full-image backbone features (``Model`` runs the
            backbone once per batch when any head does).
        uses_backbone: runs the backbone itself on inputs of its own (R-CNN's warped crops, the
            sliding window's padded image); ``Model`` then calls it with ``backbone=``.
        config_class: its settings dataclass (``detseg.config``), whose ``type`` names the head
            type in ``model.heads``.

    Methods:
        ``forward_train(features, batch, **kw) -> {loss name: scalar Tensor}`` (loss names unique
        across the model's heads: prefix them with something head-specific),
        ``forward_test(features, batch, **kw)`` -> see ``output``,
        ``from_config(settings, backbone, num_classes)`` builds one from its settings.
        ``features``: ``{name: Tensor[B, C, h, w]}`` or None; ``batch``: the collated batch with
        ``pixels`` (normalised images ``[B, 3, H, W]``) and ``image_sizes`` added by ``Model``.
    """

    output: str = INSTANCES
    needs_features: bool = True
    uses_backbone: bool = False
    config_class: Optional[type] = None

    @property
    def predicts_masks(self) -> bool:
        """Its instances carry masks."""
        return False

    # What the data pipeline must provide for a head of this type, known before the model is
    # built (the class count comes from the dataset).
    @classmethod
    def wants_masks(cls, settings: Any) -> bool:
        """Training targets need instance masks."""
        return False

    @classmethod
    def proposal_settings(cls, settings: Any) -> Optional[Any]:
        """Its ``ProposalConfig`` when it reads proposals (selective-search caches come from the
        data pipeline), else None."""
        return None

    @classmethod
    def from_config(cls, settings: Any, backbone: nn.Module, num_classes: int) -> "Head":
        raise NotImplementedError(f"{cls.__name__} has no from_config")

    def forward_train(self, features: Optional[dict], batch: dict, **kwargs) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward_test(self, features: Optional[dict], batch: dict, **kwargs):
        raise NotImplementedError
