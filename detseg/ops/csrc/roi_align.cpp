// CPU kernels for RoIAlign (forward and backward).
//
// The sample geometry is not computed here: detseg/ops/_geometry.py (sample_table) states it once
// and passes, per axis, each sample's (lo, hi) index and (1 - frac, frac) weight to every kernel.
//
// Both kernels read / write a channels-last copy of the feature map, so the innermost loop runs
// over contiguous channels and vectorises. They add in torchvision's order (per output element:
// samples row by row, the four corners in its order, then one division by the sample count; per
// gradient cell: RoI, bin, sample, corner), and the extension is built with -ffp-contract=off, so
// the results are torchvision's bit for bit.
// Forward splits RoIs across threads; backward splits channels, so no two threads ever write the
// same gradient cell and no atomics are needed.
#include "ops.h"

#include "buffer_cache.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

struct Geometry {
  int64_t K, C, H, W, PH, PW, SY, SX;
};

// The sample table (sample_table's tensors), contiguous, its weights in the map's dtype.
struct Table {
  at::Tensor batch, yi, yw, xi, xw, grid;

  Table(const at::Tensor& batch_idx, const at::Tensor& y_index, const at::Tensor& y_weight,
        const at::Tensor& x_index, const at::Tensor& x_weight, const at::Tensor& grid_,
        at::ScalarType dtype)
      : batch(batch_idx.to(at::kLong).contiguous()), yi(y_index.contiguous()),
        yw(y_weight.to(dtype).contiguous()), xi(x_index.contiguous()),
        xw(x_weight.to(dtype).contiguous()), grid(grid_.contiguous()) {}
};

// What the kernels read of a Table: per RoI its image and (grid_h, grid_w); per axis and sample
// the (lo, hi) cell and (1 - frac, frac) weight. Passed by value: pointers local to the kernel,
// which the compiler need not reload after each store.
template <typename T>
struct TableView {
  const int64_t* batch;
  const int32_t *yi, *xi, *grid;
  const T *yw, *xw;

  explicit TableView(const Table& t)
      : batch(t.batch.data_ptr<int64_t>()), yi(t.yi.data_ptr<int32_t>()),
        xi(t.xi.data_ptr<int32_t>()), grid(t.grid.data_ptr<int32_t>()), yw(t.yw.data_ptr<T>()),
        xw(t.xw.data_ptr<T>()) {}
};

template <typename T>
void forward_kernel(const T* in, TableView<T> t, T* out, Geometry g) {
  const int64_t C = g.C, PH = g.PH, PW = g.PW;
  at::parallel_for(0, g.K, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> acc_buf(C);
    T* acc = acc_buf.data();
    for (int64_t k = k0; k < k1; ++k) {
      const T* base = in + t.batch[k] * g.H * g.W * C;
      const int32_t gh = t.grid[2 * k], gw = t.grid[2 * k + 1];
      const T count = static_cast<T>(std::max(gh * gw, 1));
      for (int64_t ph = 0; ph < PH; ++ph) {
        const int64_t yrow = (k * PH + ph) * g.SY;
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t xrow = (k * PW + pw) * g.SX;
          std::fill(acc, acc + C, T(0));
          for (int32_t iy = 0; iy < gh; ++iy) {
            const int32_t* yy = t.yi + (yrow + iy) * 2;
            if (yy[0] < 0) continue;
            const T hy = t.yw[(yrow + iy) * 2], ly = t.yw[(yrow + iy) * 2 + 1];
            const T* row_lo = base + yy[0] * g.W * C;
            const T* row_hi = base + yy[1] * g.W * C;
            for (int32_t ix = 0; ix < gw; ++ix) {
              const int32_t* xx = t.xi + (xrow + ix) * 2;
              if (xx[0] < 0) continue;
              const T hx = t.xw[(xrow + ix) * 2], lx = t.xw[(xrow + ix) * 2 + 1];
              const T w1 = hy * hx, w2 = hy * lx, w3 = ly * hx, w4 = ly * lx;
              const T* __restrict__ p1 = row_lo + xx[0] * C;
              const T* __restrict__ p2 = row_lo + xx[1] * C;
              const T* __restrict__ p3 = row_hi + xx[0] * C;
              const T* __restrict__ p4 = row_hi + xx[1] * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c)
                acc[c] += w1 * p1[c] + w2 * p2[c] + w3 * p3[c] + w4 * p4[c];
            }
          }
          T* o = out + k * C * PH * PW + ph * PW + pw;
          for (int64_t c = 0; c < C; ++c) o[c * PH * PW] = acc[c] / count;
        }
      }
    }
  });
}

// d[c] += (g[c] * w) / count over [c0, c1): one corner's share, in torchvision's arithmetic.
template <typename T>
inline void scatter(T* d, const T* g, T w, T count, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) d[c] += g[c] * w / count;
}

template <typename T>
void backward_kernel(const T* grad, TableView<T> t, T* gin, Geometry g) {
  const int64_t C = g.C, PH = g.PH, PW = g.PW;
  // Chunks of at least 16 channels keep each thread's loops vectorised.
  at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t k = 0; k < g.K; ++k) {
      T* base = gin + t.batch[k] * g.H * g.W * C;
      const int32_t gh = t.grid[2 * k], gw = t.grid[2 * k + 1];
      const T count = static_cast<T>(gh * gw);
      for (int64_t ph = 0; ph < PH; ++ph) {
        const int64_t yrow = (k * PH + ph) * g.SY;
        for (int64_t pw = 0; pw < PW; ++pw) {
          const int64_t xrow = (k * PW + pw) * g.SX;
          const T* gp = grad + ((k * PH + ph) * PW + pw) * C;
          for (int32_t iy = 0; iy < gh; ++iy) {
            const int32_t* yy = t.yi + (yrow + iy) * 2;
            if (yy[0] < 0) continue;
            const T hy = t.yw[(yrow + iy) * 2], ly = t.yw[(yrow + iy) * 2 + 1];
            T* row_lo = base + yy[0] * g.W * C;
            T* row_hi = base + yy[1] * g.W * C;
            for (int32_t ix = 0; ix < gw; ++ix) {
              const int32_t* xx = t.xi + (xrow + ix) * 2;
              if (xx[0] < 0) continue;
              const T hx = t.xw[(xrow + ix) * 2], lx = t.xw[(xrow + ix) * 2 + 1];
              // Corners in torchvision's order; at the map's edge two corners are one cell, and
              // separate loops keep its two additions in that order.
              scatter(row_lo + xx[0] * C, gp, hy * hx, count, c0, c1);
              scatter(row_lo + xx[1] * C, gp, hy * lx, count, c0, c1);
              scatter(row_hi + xx[0] * C, gp, ly * hx, count, c0, c1);
              scatter(row_hi + xx[1] * C, gp, ly * lx, count, c0, c1);
            }
          }
        }
      }
    }
  });
}

Geometry check(const at::Tensor& y_index, const at::Tensor& x_index, const at::Tensor& grid,
               int64_t C, int64_t H, int64_t W) {
  TORCH_CHECK(y_index.dim() == 4 && y_index.size(3) == 2 && y_index.scalar_type() == at::kInt,
              "y_index must be int32 [K, PH, SY, 2]");
  TORCH_CHECK(x_index.dim() == 4 && x_index.size(3) == 2 && x_index.scalar_type() == at::kInt,
              "x_index must be int32 [K, PW, SX, 2]");
  TORCH_CHECK(grid.dim() == 2 && grid.size(1) == 2 && grid.scalar_type() == at::kInt,
              "grid must be int32 [K, 2]");
  return {y_index.size(0), C, H, W, y_index.size(1), x_index.size(1), y_index.size(2),
          x_index.size(2)};
}

}  // namespace

at::Tensor roi_align_forward(const at::Tensor& input, const at::Tensor& batch_idx,
                             const at::Tensor& y_index, const at::Tensor& y_weight,
                             const at::Tensor& x_index, const at::Tensor& x_weight,
                             const at::Tensor& grid) {
  TORCH_CHECK(input.dim() == 4, "input must be [N, C, H, W]");
  Geometry g = check(y_index, x_index, grid, input.size(1), input.size(2), input.size(3));
  auto out = cached_zeros({g.K, g.C, g.PH, g.PW}, input.options());
  if (out.numel() == 0 || g.H * g.W == 0) return out;
  // A no-op when the map is already channels-last (the detectors' fast mode).
  auto nhwc = input.permute({0, 2, 3, 1}).contiguous();
  const Table table(batch_idx, y_index, y_weight, x_index, x_weight, grid, input.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_forward", [&] {
    forward_kernel<scalar_t>(nhwc.data_ptr<scalar_t>(), TableView<scalar_t>(table),
                             out.data_ptr<scalar_t>(), g);
  });
  return out;
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& batch_idx,
                              const at::Tensor& y_index, const at::Tensor& y_weight,
                              const at::Tensor& x_index, const at::Tensor& x_weight,
                              const at::Tensor& grid, int64_t N, int64_t H, int64_t W) {
  TORCH_CHECK(grad.dim() == 4, "grad must be [K, C, PH, PW]");
  Geometry g = check(y_index, x_index, grid, grad.size(1), H, W);
  auto gin = cached_zeros({N, H, W, g.C}, grad.options());
  // Returned as a channels-last view: [N, C, H, W] in shape, no copy.
  if (grad.numel() == 0 || H * W == 0 || N == 0) return gin.permute({0, 3, 1, 2});
  auto g_nhwc = grad.permute({0, 2, 3, 1}).contiguous();  // [K, PH, PW, C]
  const Table table(batch_idx, y_index, y_weight, x_index, x_weight, grid, grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward", [&] {
    backward_kernel<scalar_t>(g_nhwc.data_ptr<scalar_t>(), TableView<scalar_t>(table),
                              gin.data_ptr<scalar_t>(), g);
  });
  return gin.permute({0, 3, 1, 2});
}
