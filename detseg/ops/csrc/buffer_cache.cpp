// A small cache of large blocks for the kernels' outputs, so that a training loop does not page
// fault its way through fresh memory on every call.
//
// Why: glibc serves a request of 32 MiB or more (its largest mmap threshold on 64-bit) with a
// fresh mmap and unmaps it on free, so each such buffer faults on every 4 KiB page of its first
// write, on every call. RoI pooling of 2000 RoIs x 512 channels writes two 200 MB buffers (output
// and argmax): ~98k faults a forward+backward, and with them the op ran 2.8x torchvision's speed
// instead of 4.4x. A training step's box pooling (1024 RoIs x 256 x 7 x 7, 51 MB) is in the same
// regime. Here a freed output's block goes back to this cache instead, and the next call of about
// that size reuses it with its pages already mapped.
//
// Only blocks of 32 MiB and up: smaller ones come from glibc's heap, which already reuses freed
// memory for the next tensor of any kind; holding them here took that memory from the rest of
// the step (a Faster R-CNN training step faulted ~25k pages with a 4 MiB floor, ~20k with no
// cache, ~13-17k with this one). Blocks are sizes rounded up to 2 MiB, so that slightly different
// RoI counts share them; the cache keeps at most kMaxBlocks blocks and kMaxBytes bytes, dropping
// the oldest, and release_cached_buffers() (detseg.ops.release_cpu_cache) empties it, like
// torch.cuda.empty_cache does for torch's CUDA cache.
#include "buffer_cache.h"

#include <c10/util/accumulate.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t(32) << 20;  // smaller: glibc's heap reuses them (at::empty)
constexpr size_t kBlock = size_t(2) << 20;
constexpr size_t kMaxBlocks = 8;
constexpr size_t kMaxBytes = size_t(1) << 30;

struct Cache {
  std::mutex mutex;
  std::vector<std::pair<size_t, void*>> blocks;  // (bytes, block), oldest first
  size_t bytes = 0;
};

// Never destroyed: a tensor freed during interpreter shutdown still finds it.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

// The smallest cached block of at least `bytes` and at most twice that, or null; its size in
// `*size_out`, which is what the block must be given back as.
void* take(size_t bytes, size_t* size_out) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  size_t best = c.blocks.size();
  for (size_t i = 0; i < c.blocks.size(); ++i) {
    const size_t size = c.blocks[i].first;
    if (size >= bytes && size <= 2 * bytes && (best == c.blocks.size() || size < c.blocks[best].first))
      best = i;
  }
  if (best == c.blocks.size()) return nullptr;
  void* p = c.blocks[best].second;
  *size_out = c.blocks[best].first;
  c.bytes -= c.blocks[best].first;
  c.blocks.erase(c.blocks.begin() + best);
  return p;
}

void give_back(void* p, size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.blocks.emplace_back(bytes, p);
  c.bytes += bytes;
  while (c.blocks.size() > kMaxBlocks || c.bytes > kMaxBytes) {
    std::free(c.blocks.front().second);
    c.bytes -= c.blocks.front().first;
    c.blocks.erase(c.blocks.begin());
  }
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef size, const at::TensorOptions& options) {
#ifdef _WIN32
  return at::empty(size, options);  // no std::aligned_alloc in MSVC's C library
#else
  const size_t bytes = c10::multiply_integers(size) * options.dtype().itemsize();
  if (bytes < kMinBytes) return at::empty(size, options);
  const size_t rounded = (bytes + kBlock - 1) / kBlock * kBlock;
  size_t block = rounded;  // a reused block may be up to twice the request: its own size
  void* p = take(rounded, &block);
  if (p == nullptr) {
    p = std::aligned_alloc(64, rounded);  // rounded is a multiple of 64, as aligned_alloc wants
    if (p == nullptr) return at::empty(size, options);
  }
  return at::from_blob(p, size, [block](void* q) { give_back(q, block); }, options);
#endif
}

at::Tensor cached_zeros(at::IntArrayRef size, const at::TensorOptions& options) {
  return cached_empty(size, options).zero_();
}

int64_t release_cached_buffers() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  const size_t freed = c.bytes;
  for (auto& block : c.blocks) std::free(block.second);
  c.blocks.clear();
  c.bytes = 0;
  return static_cast<int64_t>(freed);
}

int64_t cached_buffer_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.bytes);
}
