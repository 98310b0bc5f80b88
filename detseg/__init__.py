"""detseg: object detection and segmentation, the classic lineage on one shared backbone."""
from .api import Predictor, load_model

__version__ = "0.1.0"  # pyproject.toml's version; exported files record it

__all__ = ["Predictor", "__version__", "load_model"]
