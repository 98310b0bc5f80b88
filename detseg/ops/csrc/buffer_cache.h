// Reused memory for the kernels' large outputs (declarations; buffer_cache.cpp has the why).
#pragma once

#include <ATen/ATen.h>

// at::empty's result, from a block of this cache when one fits (32 MiB and up).
at::Tensor cached_empty(at::IntArrayRef size, const at::TensorOptions& options);
// at::zeros's result, the same way.
at::Tensor cached_zeros(at::IntArrayRef size, const at::TensorOptions& options);
// Frees every block the cache holds; the number of bytes freed.
int64_t release_cached_buffers();
// Bytes the cache holds now (blocks not in use by any tensor).
int64_t cached_buffer_bytes();
