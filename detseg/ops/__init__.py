"""Region ops: RoI pooling (Fast R-CNN), spatial-pyramid pooling (SPPNet), RoIAlign (Mask
R-CNN) and its FPN form, batched mask pasting."""
from ._ext import cuda_kernels, release_cpu_cache, set_cuda_kernels
from .multiscale_roi_align import MultiScaleRoIAlign
from .paste_masks import paste_masks
from .roi_align import RoIAlign, roi_align
from .roi_pool import RoIPool, SpatialPyramidPool, backend, roi_pool, roi_spp_pool

__all__ = ["MultiScaleRoIAlign", "RoIAlign", "RoIPool", "SpatialPyramidPool", "backend", "cuda_kernels",
           "paste_masks", "release_cpu_cache", "roi_align", "roi_pool", "roi_spp_pool", "set_cuda_kernels"]
