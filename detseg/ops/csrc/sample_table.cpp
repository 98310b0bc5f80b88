// RoIAlign's sample table on the CPU in one call: the expressions of
// detseg/ops/_geometry.py's sample_table / _axis_samples, operation for operation in the rois'
// dtype, so that the table is bit-equal to it (tests/ops/test_bin_table.py checks adversarial
// rois); the Python form takes some 130 small torch ops, whose dispatch cost dominated a call
// with few RoIs.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ops.h"

namespace {

// torch.nan_to_num(x, nan=0).clamp(min=0).to(int32)
template <typename T>
int32_t grid_of(T ceil_bin) {
  T v = std::isnan(ceil_bin) ? T(0)
        : std::isinf(ceil_bin) ? (ceil_bin > 0 ? std::numeric_limits<T>::max()
                                               : std::numeric_limits<T>::lowest())
                               : ceil_bin;
  v = v < T(0) ? T(0) : v;
  return static_cast<int32_t>(v);
}

// One axis of one RoI: index [P, S, 2] (lo, hi) and weight [P, S, 2] (1 - frac, frac).
template <typename T>
void axis(T start, T bin, int32_t grid, int64_t pooled, int64_t limit, int64_t S, int32_t* index,
          T* weight) {
  const T g = static_cast<T>(grid);
  for (int64_t p = 0; p < pooled; ++p) {
    const T first = start + static_cast<T>(p) * bin;
    for (int64_t j = 0; j < S; ++j) {
      const T within = ((static_cast<T>(j) + T(0.5)) * bin) / g;
      T pos = first + within;
      const bool valid = (pos >= T(-1)) && (pos <= static_cast<T>(limit)) && (j < grid);
      if (pos <= T(0)) pos = T(0);
      if (!valid) pos = T(0);
      int32_t lo = static_cast<int32_t>(pos);
      int32_t hi;
      if (lo >= limit - 1) {
        lo = static_cast<int32_t>(limit - 1);
        hi = lo;
        pos = static_cast<T>(lo);
      } else {
        hi = lo + 1;
      }
      const T frac = pos - static_cast<T>(lo);
      const int64_t at = 2 * (p * S + j);
      index[at] = valid ? lo : -1;
      index[at + 1] = hi;
      weight[at] = T(1) - frac;
      weight[at + 1] = frac;
    }
  }
}

template <typename T>
std::vector<at::Tensor> table(const at::Tensor& r, int64_t ph, int64_t pw, double spatial_scale,
                              int64_t sampling_ratio, bool aligned, int64_t height,
                              int64_t width) {
  const int64_t K = r.size(0);
  const T* rois = r.data_ptr<T>();
  const T scale = static_cast<T>(spatial_scale);
  const T offset = aligned ? T(0.5) : T(0);
  std::vector<T> start(2 * K), bin(2 * K);  // (x, y) per RoI
  std::vector<int32_t> grid(2 * K);
  int64_t sx = 0, sy = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* b = rois + 5 * k;
    for (int a = 0; a < 2; ++a) {
      const T s = b[1 + a] * scale - offset;
      T size = b[3 + a] * scale - offset - s;
      if (!aligned) size = size < T(1) ? T(1) : size;  // torch.clamp(min=1): NaN stays
      const T b_size = size / static_cast<T>(a == 0 ? pw : ph);
      start[2 * k + a] = s;
      bin[2 * k + a] = b_size;
      grid[2 * k + a] = sampling_ratio > 0 ? static_cast<int32_t>(sampling_ratio)
                                           : grid_of<T>(std::ceil(b_size));
    }
    sx = std::max<int64_t>(sx, grid[2 * k]);
    sy = std::max<int64_t>(sy, grid[2 * k + 1]);
  }
  if (sampling_ratio > 0) sx = sy = K ? sampling_ratio : 0;
  if (!K) sx = sy = 0;
  const auto ints = r.options().dtype(at::kInt);
  at::Tensor y_index = at::empty({K, ph, sy, 2}, ints), x_index = at::empty({K, pw, sx, 2}, ints);
  at::Tensor y_weight = at::empty({K, ph, sy, 2}, r.options());
  at::Tensor x_weight = at::empty({K, pw, sx, 2}, r.options());
  at::Tensor grid_out = at::empty({K, 2}, ints);
  int32_t* g = grid_out.data_ptr<int32_t>();
  for (int64_t k = 0; k < K; ++k) {
    axis<T>(start[2 * k + 1], bin[2 * k + 1], grid[2 * k + 1], ph, height, sy,
            y_index.data_ptr<int32_t>() + k * ph * sy * 2, y_weight.data_ptr<T>() + k * ph * sy * 2);
    axis<T>(start[2 * k], bin[2 * k], grid[2 * k], pw, width, sx,
            x_index.data_ptr<int32_t>() + k * pw * sx * 2, x_weight.data_ptr<T>() + k * pw * sx * 2);
    g[2 * k] = grid[2 * k + 1];  // (grid_h, grid_w)
    g[2 * k + 1] = grid[2 * k];
  }
  at::Tensor batch = r.select(1, 0).to(at::kLong);
  return {batch, y_index, y_weight, x_index, x_weight, grid_out};
}

}  // namespace

std::vector<at::Tensor> roi_align_table(const at::Tensor& rois, int64_t pooled_height,
                                        int64_t pooled_width, double spatial_scale,
                                        int64_t sampling_ratio, bool aligned, int64_t height,
                                        int64_t width) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5]");
  TORCH_CHECK(rois.scalar_type() == at::kFloat || rois.scalar_type() == at::kDouble,
              "rois must be float32 or float64");
  const at::Tensor r = rois.contiguous();
  if (r.scalar_type() == at::kDouble) {
    return table<double>(r, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
                         height, width);
  }
  return table<float>(r, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
                      height, width);
}
