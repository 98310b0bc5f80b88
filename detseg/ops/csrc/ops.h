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
