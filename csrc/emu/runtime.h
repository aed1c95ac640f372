// The CUDA emulator's runtime (csrc/emu/, the FASTGPT_CUDA_EMULATE=1 build): kernel launches,
// the per-thread fibers, block and warp barriers, shared memory. Plain C++, no ATen.
//
// A launch runs the grid's blocks on a few OS threads, one block at a time per OS thread; every
// CUDA thread of a block is a cooperative fiber on its own guard-paged stack. A fiber runs until
// it waits (a __syncthreads, a warp collective that not every lane has reached), then the
// schedule picks the next one. Schedules (FASTGPT_CUDA_EMULATE_SCHEDULE, read at each launch):
//   interleaved (default): threads in turn; cp.async copies land at the wait_group that needs them
//   ahead: the lowest runnable thread first, so one warp runs as far ahead as it can; copies
//          land when issued
// A deadlock, a divergent warp collective, a lane leaving a collective, a bad shared-memory
// address or a fault in a kernel stops the launch with an error naming the block and thread,
// thrown from the launch as a c10::Error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fastgpt_emu {

// What the builtin variables of the running CUDA thread read (threadIdx, blockIdx, ...).
struct ThreadIds {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

extern thread_local const ThreadIds* tls_ids;

// Per-lane exchange slot of a warp collective: each lane fills its inputs, the last lane to
// arrive runs the collective for the whole warp, every lane reads its outputs.
struct LaneSlot {
  uint32_t in[12];
  uint32_t out[4];
  const void* addr;
  int arg;
};

// Runs the collective for every lane of `mask` (slots indexed by lane).
using WarpFn = void (*)(const char* what, LaneSlot* slots, uint32_t mask);

LaneSlot& lane_slot();
int lane_id();
// Wait until every lane of `mask` has called warp_collective with the same `what`, then run `fn`
// once. Lanes that arrive with another `what` or mask, or leave the kernel, are an error.
void warp_collective(const char* what, uint32_t mask, WarpFn fn);
void block_barrier();

// Stop the launch: `message` names the problem; block and thread (of `lane` in the calling
// thread's warp, or the calling thread when lane < 0) are added. Never returns.
[[noreturn]] void fail(const char* message, int lane = -1);
[[noreturn]] void fail_not_emulated(const char* instruction);

// Shared memory of the running block (0xFF-filled at block start, reads as NaN; each window ends
// at an inaccessible page). static_shared: one window per __shared__ declaration (`key`).
void* static_shared(const void* key, size_t bytes);
void* dynamic_shared();
// Whether [p, p + bytes) lies in one of the running block's shared windows.
bool in_shared(const void* p, size_t bytes);
bool schedule_ahead();  // the launch's schedule is "ahead"

// cp.async bookkeeping of the calling thread (ptx.cpp implements the instructions).
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes;      // cp-size
  int src_bytes;  // bytes read; the rest of dst is zero-filled
};
void async_issue(const AsyncCopy& c);
void async_commit();
void async_wait(int pending_groups);

using GridBody = void (*)(const void* ctx);
void run_grid(const char* kernel, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem,
              GridBody body, const void* ctx);

template <typename... P>
struct Launch {
  const char* name;
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;

  template <typename... A>
  void operator()(A&&... args) const {
    using Args = std::tuple<void (*)(P...), std::decay_t<P>...>;
    const Args packed(kernel, std::forward<A>(args)...);
    run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, smem, &call<Args>, &packed);
  }

  template <typename Args>
  static void call(const void* ctx) {
    Args copy = *static_cast<const Args*>(ctx);  // kernel arguments are per-thread copies
    std::apply([](auto k, auto&... a) { k(a...); }, copy);
  }
};

// kernel<<<grid, block, smem, stream>>>(args) is rewritten to launch("kernel", kernel, grid,
// block, smem, stream)(args) by the emulated build.
template <typename... P>
Launch<P...> launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                    cudaStream_t = nullptr) {
  return {name, kernel, grid, block, smem};
}

}  // namespace fastgpt_emu
