// CPU kernels for bin max pooling (RoI pooling and spatial-pyramid pooling).
//
// The bin geometry is not computed here: detseg/ops/_geometry.py states it once and passes the
// bin table (int32 [K, B, 4] = h_start, h_end, w_start, w_end) to every kernel.
//
// Forward reads a channels-last copy of the feature map so that the innermost loop runs over
// contiguous channels, which the compiler vectorises; RoIs are split across threads.
// Backward splits channels across threads, so no two threads write the same gradient cell,
// and adds in RoI-then-bin order, the same order as torchvision's kernel.
#include "ops.h"

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cfloat>
#include <vector>

namespace {

// argmax may be null (no gradient wanted): the loop is then a plain vectorised max.
template <typename T>
void forward_kernel(const T* in_nhwc, const int64_t* batch, const int32_t* bins, T* out,
                    int32_t* argmax, int64_t K, int64_t B, int64_t C, int64_t H, int64_t W) {
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> best(C);
    std::vector<int32_t> where(C);
    for (int64_t k = k0; k < k1; ++k) {
      const T* base = in_nhwc + batch[k] * H * W * C;
      T* o = out + k * C * B;
      int32_t* a = argmax ? argmax + k * C * B : nullptr;
      for (int64_t b = 0; b < B; ++b) {
        const int32_t* bin = bins + (k * B + b) * 4;
        const int32_t h0 = bin[0], h1 = bin[1], w0 = bin[2], w1 = bin[3];
        if (h1 <= h0 || w1 <= w0) {
          for (int64_t c = 0; c < C; ++c) o[c * B + b] = T(0);
          if (a)
            for (int64_t c = 0; c < C; ++c) a[c * B + b] = -1;
          continue;
        }
        std::fill(best.begin(), best.end(), static_cast<T>(-FLT_MAX));
        std::fill(where.begin(), where.end(), -1);
        T* __restrict__ bp = best.data();
        int32_t* __restrict__ wp = where.data();
        for (int32_t h = h0; h < h1; ++h) {
          for (int32_t w = w0; w < w1; ++w) {
            const int32_t idx = h * static_cast<int32_t>(W) + w;
            const T* __restrict__ px = base + static_cast<int64_t>(idx) * C;
            // Branch-free so it vectorises; strict '>' keeps the first maximum and skips NaN.
            if (a) {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const bool gt = px[c] > bp[c];
                bp[c] = gt ? px[c] : bp[c];
                wp[c] = gt ? idx : wp[c];
              }
            } else {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) bp[c] = px[c] > bp[c] ? px[c] : bp[c];
            }
          }
        }
        for (int64_t c = 0; c < C; ++c) o[c * B + b] = bp[c];
        if (a)
          for (int64_t c = 0; c < C; ++c) a[c * B + b] = wp[c];
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* grad, const int32_t* argmax, const int64_t* batch, T* grad_in,
                     int64_t K, int64_t B, int64_t C, int64_t HW) {
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t k = 0; k < K; ++k) {
        T* gi = grad_in + (batch[k] * C + c) * HW;
        const T* g = grad + (k * C + c) * B;
        const int32_t* a = argmax + (k * C + c) * B;
        for (int64_t b = 0; b < B; ++b) {
          if (a[b] >= 0) gi[a[b]] += g[b];
        }
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> bin_max_pool_forward(const at::Tensor& input, const at::Tensor& batch_idx,
                                             const at::Tensor& bins, bool with_argmax) {
  TORCH_CHECK(input.dim() == 4, "input must be [N, C, H, W]");
  TORCH_CHECK(bins.dim() == 3 && bins.size(2) == 4, "bins must be [K, B, 4]");
  TORCH_CHECK(bins.scalar_type() == at::kInt, "bins must be int32");
  const int64_t C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t K = bins.size(0), B = bins.size(1);
  auto nhwc = input.permute({0, 2, 3, 1}).contiguous();
  auto batch = batch_idx.to(at::kLong).contiguous();
  auto bins_c = bins.contiguous();
  auto out = at::empty({K, C, B}, input.options());
  auto argmax = at::empty({with_argmax ? K : 0, C, B}, input.options().dtype(at::kInt));
  if (K == 0 || B == 0 || C == 0) return {out, argmax};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "bin_max_pool_forward", [&] {
    forward_kernel<scalar_t>(nhwc.data_ptr<scalar_t>(), batch.data_ptr<int64_t>(),
                             bins_c.data_ptr<int32_t>(), out.data_ptr<scalar_t>(),
                             with_argmax ? argmax.data_ptr<int32_t>() : nullptr, K, B, C, H, W);
  });
  return {out, argmax};
}

at::Tensor bin_max_pool_backward(const at::Tensor& grad, const at::Tensor& argmax,
                                 const at::Tensor& batch_idx, int64_t N, int64_t H, int64_t W) {
  const int64_t K = grad.size(0), C = grad.size(1), B = grad.size(2);
  auto grad_in = at::zeros({N, C, H, W}, grad.options());
  if (K == 0 || B == 0 || C == 0) return grad_in;
  auto g = grad.contiguous();
  auto a = argmax.contiguous();
  auto batch = batch_idx.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "bin_max_pool_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), a.data_ptr<int32_t>(),
                              batch.data_ptr<int64_t>(), grad_in.data_ptr<scalar_t>(), K, B, C,
                              H * W);
  });
  return grad_in;
}
