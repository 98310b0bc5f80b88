"""See inside a model: the per-layer table, feature maps and filters, Grad-CAM saliency, the
sliding window's score maps, proposals, pooling bins and FCN's upsampling stages
(``tools/explain.py`` draws them; ``Explainer`` gives them to a notebook)."""
from .explainer import VIEWS, Explainer
from .features import feature_grid, filter_grid, find_module
from .layers import LayerRow, LayerTable, format_layer_table, layer_table
from .pooling import region_geometry
from .proposals import recall_at
from .receptive_field import Field, FieldTracker, receptive_fields
from .saliency import Saliency, grad_cam, mass_in_box
from .upsampling import upsampling_stages
from .windows import window_score_maps

__all__ = ["VIEWS", "Explainer", "Field", "FieldTracker", "LayerRow", "LayerTable", "Saliency",
           "feature_grid", "filter_grid", "find_module", "format_layer_table", "grad_cam",
           "layer_table", "mass_in_box", "recall_at", "receptive_fields", "region_geometry",
           "upsampling_stages", "window_score_maps"]
