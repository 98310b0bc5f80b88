"""detseg: object detection and segmentation, the classic lineage on one shared backbone."""
from .api import Predictor, load_model

from .utils import __version__

__all__ = ["Predictor", "__version__", "load_model"]
