// The RoI / SPP bin table on the CPU in one call: the expressions of detseg/ops/_geometry.py
// (roi_windows, window_bins), operation for operation in the boxes' dtype, so that the table is
// bit-equal to it (tests/ops/test_bin_table.py checks adversarial boxes); the Python form builds
// it from a few dozen small torch ops, whose dispatch cost dominated a call with few RoIs.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ops.h"

namespace {

// torch.clamp(x, lo, hi): NaN stays NaN.
template <typename T>
inline T clamp_nan(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// _geometry._round_half_away: sign(x) * floor(|x| + 0.5), torch.sign(NaN) being 0.
template <typename T>
inline T round_half_away(T x) {
  const T sign = x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
  return sign * std::floor(std::abs(x) + T(0.5));
}

// boxes: K rows of `stride` values, (x1, y1, x2, y2) at offset 0 of each row.
template <typename T>
void fill(const T* boxes, int64_t stride, int64_t K, const std::vector<int64_t>& levels, T scale,
          bool sppnet, int64_t height, int64_t width, int64_t B, int32_t* out) {
  for (int64_t k = 0; k < K; ++k) {
    const T* b = boxes + stride * k;
    T x0, y0, x1, y1;  // the inclusive feature-map window (roi_windows)
    if (!sppnet) {
      x0 = round_half_away(b[0] * scale);
      y0 = round_half_away(b[1] * scale);
      x1 = round_half_away(b[2] * scale);
      y1 = round_half_away(b[3] * scale);
    } else {
      T s[2] = {std::floor(b[0] * scale) + T(1), std::floor(b[1] * scale) + T(1)};
      T e[2] = {std::ceil(b[2] * scale) - T(1), std::ceil(b[3] * scale) - T(1)};
      for (int a = 0; a < 2; ++a) {
        const T middle = std::floor((s[a] + e[a]) / T(2));
        if (e[a] < s[a]) {
          s[a] = middle;
          e[a] = middle;
        }
      }
      x0 = s[0];
      y0 = s[1];
      x1 = e[0];
      y1 = e[1];
    }
    T roi_w = x1 - x0 + T(1);
    T roi_h = y1 - y0 + T(1);
    roi_w = roi_w < T(1) ? T(1) : roi_w;  // torch.clamp(min=1)
    roi_h = roi_h < T(1) ? T(1) : roi_h;
    int32_t* row = out + 4 * B * k;
    for (size_t l = 0; l + 1 < levels.size(); l += 2) {
      const int64_t lh = levels[l], lw = levels[l + 1];
      const T step_h = roi_h / T(lh), step_w = roi_w / T(lw);
      for (int64_t i = 0; i < lh; ++i) {
        const int32_t hs = static_cast<int32_t>(
            clamp_nan(std::floor(T(i) * step_h) + y0, T(0), T(height)));
        const int32_t he = static_cast<int32_t>(
            clamp_nan(std::ceil(T(i + 1) * step_h) + y0, T(0), T(height)));
        for (int64_t j = 0; j < lw; ++j) {
          row[0] = hs;
          row[1] = he;
          row[2] = static_cast<int32_t>(clamp_nan(std::floor(T(j) * step_w) + x0, T(0), T(width)));
          row[3] = static_cast<int32_t>(
              clamp_nan(std::ceil(T(j + 1) * step_w) + x0, T(0), T(width)));
          row += 4;
        }
      }
    }
  }
}

}  // namespace

namespace {

at::Tensor table(const at::Tensor& rows, int64_t offset, const std::vector<int64_t>& levels,
                 double spatial_scale, bool sppnet, int64_t height, int64_t width) {
  TORCH_CHECK(rows.scalar_type() == at::kFloat || rows.scalar_type() == at::kDouble,
              "boxes must be float32 or float64");
  TORCH_CHECK(!levels.empty() && levels.size() % 2 == 0, "levels: (rows, cols) pairs");
  int64_t B = 0;
  for (size_t l = 0; l < levels.size(); l += 2) B += levels[l] * levels[l + 1];
  const int64_t K = rows.size(0), stride = rows.size(1);
  at::Tensor out = at::empty({K, B, 4}, rows.options().dtype(at::kInt));
  if (rows.scalar_type() == at::kDouble) {
    fill<double>(rows.data_ptr<double>() + offset, stride, K, levels, spatial_scale, sppnet, height,
                 width, B, out.data_ptr<int32_t>());
  } else {
    fill<float>(rows.data_ptr<float>() + offset, stride, K, levels,
                static_cast<float>(spatial_scale), sppnet, height, width, B,
                out.data_ptr<int32_t>());
  }
  return out;
}

}  // namespace

at::Tensor bin_table(const at::Tensor& boxes, const std::vector<int64_t>& levels,
                     double spatial_scale, bool sppnet, int64_t height, int64_t width) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [K, 4]");
  return table(boxes.contiguous(), 0, levels, spatial_scale, sppnet, height, width);
}

std::vector<at::Tensor> roi_bins(const at::Tensor& rois, const std::vector<int64_t>& levels,
                                 double spatial_scale, bool sppnet, int64_t height,
                                 int64_t width) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5]");
  const at::Tensor r = rois.contiguous();
  // rois[:, 0].long(): a float to int64 conversion, truncating like torch's
  at::Tensor batch = r.select(1, 0).to(at::kLong);
  return {batch, table(r, 1, levels, spatial_scale, sppnet, height, width)};
}
