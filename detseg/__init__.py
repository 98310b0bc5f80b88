"""detseg: object detection and segmentation, the classic lineage on one shared backbone."""
from .api import Predictor, load_model

__all__ = ["Predictor", "load_model"]
