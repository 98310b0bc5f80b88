// Python bindings of the CPU kernels (one extension module for the whole op family).
#include <torch/extension.h>

#include "buffer_cache.h"
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &bin_max_pool_forward, "bin max pooling forward (CPU)");
  m.def("backward", &bin_max_pool_backward, "bin max pooling backward (CPU)");
  m.def("roi_align_forward", &roi_align_forward, "RoIAlign forward from a sample table (CPU)");
  m.def("roi_align_backward", &roi_align_backward, "RoIAlign backward from a sample table (CPU)");
  m.def("bin_table", &bin_table, "the RoI / SPP bin table of _geometry.bin_table (CPU)");
  m.def("roi_align_table", &roi_align_table, "batch index and RoIAlign sample table (CPU)");
  m.def("roi_bins", &roi_bins, "batch index and bin table of rois [K, 5] (CPU)");
  m.def("release_cached_buffers", &release_cached_buffers,
        "free the blocks the kernels' output cache holds; returns the bytes freed");
  m.def("cached_buffer_bytes", &cached_buffer_bytes, "bytes the kernels' output cache holds");
}
