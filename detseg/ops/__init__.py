"""Region pooling ops: RoI pooling (Fast R-CNN) and spatial-pyramid pooling (SPPNet)."""
from .roi_pool import RoIPool, SpatialPyramidPool, backend, roi_pool, roi_spp_pool

__all__ = ["RoIPool", "SpatialPyramidPool", "backend", "roi_pool", "roi_spp_pool"]
