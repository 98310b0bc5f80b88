// Declarations of detseg's CPU kernels; bindings.cpp exposes them to Python.
#pragma once

#include <ATen/ATen.h>

#include <vector>

// Outputs [K, C * B], level after level (level_bins: bins per level, summing to B).
std::vector<at::Tensor> bin_max_pool_forward(const at::Tensor& input, const at::Tensor& batch_idx,
                                             const at::Tensor& bins, bool with_argmax,
                                             const std::vector<int64_t>& level_bins);
at::Tensor bin_max_pool_backward(const at::Tensor& grad, const at::Tensor& argmax,
                                 const at::Tensor& batch_idx, int64_t N, int64_t H, int64_t W,
                                 const std::vector<int64_t>& level_bins);

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& batch_idx,
                             const at::Tensor& y_index, const at::Tensor& y_weight,
                             const at::Tensor& x_index, const at::Tensor& x_weight,
                             const at::Tensor& grid);
at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& batch_idx,
                              const at::Tensor& y_index, const at::Tensor& y_weight,
                              const at::Tensor& x_index, const at::Tensor& x_weight,
                              const at::Tensor& grid, int64_t N, int64_t H, int64_t W);

// _geometry.bin_table on the CPU in one call (bit-equal): int32 [K, B, 4]; levels flat as
// (rows, cols) pairs; sppnet: SPPNet's window mapping, else Fast R-CNN's.
at::Tensor bin_table(const at::Tensor& boxes, const std::vector<int64_t>& levels,
                     double spatial_scale, bool sppnet, int64_t height, int64_t width);
// The same from rois [K, 5] (batch index, box) in one call: (batch index int64 [K], table).
std::vector<at::Tensor> roi_bins(const at::Tensor& rois, const std::vector<int64_t>& levels,
                                 double spatial_scale, bool sppnet, int64_t height, int64_t width);
// _geometry.sample_table on the CPU in one call (bit-equal), with rois[:, 0] as int64:
// (batch, y_index, y_weight, x_index, x_weight, grid).
std::vector<at::Tensor> roi_align_table(const at::Tensor& rois, int64_t pooled_height,
                                        int64_t pooled_width, double spatial_scale,
                                        int64_t sampling_ratio, bool aligned, int64_t height,
                                        int64_t width);
