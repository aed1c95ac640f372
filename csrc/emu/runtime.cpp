// The CUDA emulator's runtime: fibers, the two schedules, barriers, warp collectives, shared
// memory windows, fault reporting and the grid launcher (see runtime.h).
#include "emu/runtime.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__)
#error "the CUDA emulator's fibers switch x86-64 contexts; port fastgpt_emu_swap to this architecture"
#endif

// fastgpt_emu_swap(save, next): save the callee-saved registers, MXCSR and the x87 control word on
// the current stack, store its pointer in *save and resume the context saved at `next`.
// fastgpt_emu_start: a new fiber's first return address; calls r13(r12).
asm(R"(
  .text
  .globl fastgpt_emu_swap
  .hidden fastgpt_emu_swap
  .type fastgpt_emu_swap, @function
fastgpt_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fastgpt_emu_swap, .-fastgpt_emu_swap
  .globl fastgpt_emu_start
  .hidden fastgpt_emu_start
  .type fastgpt_emu_start, @function
fastgpt_emu_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size fastgpt_emu_start, .-fastgpt_emu_start
)");

extern "C" void fastgpt_emu_swap(void** save, void* next) __attribute__((visibility("hidden")));
extern "C" void fastgpt_emu_start() __attribute__((visibility("hidden")));

namespace fastgpt_emu {

thread_local const ThreadIds* tls_ids = nullptr;

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kMaxSharedBytes = 227 * 1024;  // per block, as on sm90
constexpr size_t kDefaultSharedBytes = 48 * 1024;

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// An mmap'd range whose lowest (stack) or highest (window) page is inaccessible.
struct Guarded {
  uint8_t* base = nullptr;
  size_t len = 0;
  uint8_t* guard = nullptr;  // the inaccessible page

  Guarded() = default;
  Guarded(size_t usable, bool guard_low) {
    const size_t p = page_size();
    len = (usable + p - 1) / p * p + p;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "fastgpt CUDA emulator: mmap of ", len, " bytes failed");
    base = static_cast<uint8_t*>(m);
    guard = guard_low ? base : base + len - p;
    TORCH_CHECK(mprotect(guard, p, PROT_NONE) == 0, "fastgpt CUDA emulator: mprotect failed");
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  ~Guarded() {
    if (base != nullptr) munmap(base, len);
  }
  bool guards(const void* a) const {
    const uint8_t* p = static_cast<const uint8_t*>(a);
    return p >= guard && p < guard + page_size();
  }
};

struct SharedWindow {
  const void* key;
  size_t bytes;
  std::unique_ptr<Guarded> mem;
  uint8_t* ptr;        // bytes (rounded up to 16) ending at the guard page
  uint64_t block = 0;  // serial of the block that last filled it
};

enum class State : uint8_t { kRunnable, kWarp, kBarrier, kDone };

struct Fiber {
  void* sp = nullptr;
  std::unique_ptr<Guarded> stack;
  ThreadIds ids;
  State state = State::kRunnable;
  int tid = 0;  // linear thread index in the block
  std::vector<AsyncCopy> copies;    // issued, not landed: committed groups first, then the open group
  std::vector<size_t> group_end;    // end index in `copies` of each committed group
};

struct WarpState {
  const char* what = nullptr;
  uint32_t mask = 0;
  uint32_t arrived = 0;
  uint32_t exited = 0;
  uint32_t present = 0;  // lanes that exist (a partial last warp has fewer)
  int first = 0;         // lane that arrived first
  LaneSlot slots[32];
};

struct LaunchInfo;

// One OS thread's resources, reused across blocks and launches.
struct Worker {
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<WarpState> warps;
  std::vector<SharedWindow> windows;
  std::vector<uint64_t> runnable;  // bitset over fibers
  std::unique_ptr<Guarded> altstack;
  void* sched_sp = nullptr;
  void* dead_sp = nullptr;
  Fiber* cur = nullptr;
  const LaunchInfo* launch = nullptr;
  uint3 block_idx{};
  uint64_t block_serial = 0;
  int nthreads = 0;
  int done = 0;
  int barrier_arrived = 0;
  int last = -1;
  bool failed = false;
  std::string error;
};

struct LaunchInfo {
  const char* kernel;
  dim3 grid, block;
  size_t smem;
  bool ahead;
  GridBody body;
  const void* ctx;
};

thread_local Worker* tls_worker = nullptr;

std::mutex g_pool_mutex;
std::vector<std::unique_ptr<Worker>> g_pool;
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_dynamic_smem;
std::atomic<uint64_t> g_block_serial{0};
struct sigaction g_prev_segv, g_prev_bus;
std::once_flag g_signals_once;

std::string ids_str(uint3 v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

uint3 thread_of(const Worker& w, int tid) {
  const dim3 b = w.launch->block;
  return {static_cast<unsigned>(tid) % b.x, (static_cast<unsigned>(tid) / b.x) % b.y,
          static_cast<unsigned>(tid) / (b.x * b.y)};
}

std::string where(const Worker& w, int tid) {
  return std::string(w.launch->kernel) + ": block " + ids_str(w.block_idx) + " thread " + ids_str(thread_of(w, tid));
}

void set_runnable(Worker& w, int tid, bool on) {
  uint64_t& word = w.runnable[static_cast<size_t>(tid) >> 6];
  const uint64_t bit = uint64_t{1} << (tid & 63);
  word = on ? (word | bit) : (word & ~bit);
}

// Next fiber to run: lowest runnable (ahead) or the first runnable after the last one (interleaved).
int pick(const Worker& w) {
  const int words = static_cast<int>(w.runnable.size());
  auto first_from = [&](int from) -> int {
    for (int i = from >> 6; i < words; ++i) {
      uint64_t word = w.runnable[i];
      if (i == (from >> 6)) word &= ~uint64_t{0} << (from & 63);
      if (word != 0) return i * 64 + __builtin_ctzll(word);
    }
    return -1;
  };
  if (w.launch->ahead) return first_from(0);
  const int after = w.last + 1 < w.nthreads ? w.last + 1 : 0;
  const int t = first_from(after);
  return t >= 0 ? t : first_from(0);
}

// Back to the scheduler; returns when this fiber is picked again.
void yield_to_scheduler(Worker& w) { fastgpt_emu_swap(&w.cur->sp, w.sched_sp); }

[[noreturn]] void abort_block(Worker& w, std::string message) {
  if (!w.failed) {
    w.failed = true;
    w.error = std::move(message);
  }
  fastgpt_emu_swap(&w.dead_sp, w.sched_sp);
  __builtin_unreachable();
}

void land(const AsyncCopy& c) {
  std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<uint8_t*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
}

void fiber_exit(Worker& w) {
  Fiber& f = *w.cur;
  const int warp = f.tid / 32, lane = f.tid % 32;
  WarpState& ws = w.warps[warp];
  if (ws.arrived != 0 && (ws.mask >> lane & 1u)) {
    abort_block(w, "lane " + std::to_string(lane) + " exited while lane " + std::to_string(ws.first) + " of its warp waits in " +
                       ws.what + " (mask 0x" + [&] {
                         char b[16];
                         std::snprintf(b, sizeof b, "%08x", ws.mask);
                         return std::string(b);
                       }() + ") at " + where(w, f.tid));
  }
  if (w.barrier_arrived > 0) {
    abort_block(w, "thread exited while " + std::to_string(w.barrier_arrived) +
                       " threads of its block wait at __syncthreads (a barrier not every thread reaches) at " +
                       where(w, f.tid));
  }
  ws.exited |= 1u << lane;
  f.state = State::kDone;
  set_runnable(w, f.tid, false);
  f.copies.clear();
  f.group_end.clear();
  ++w.done;
  fastgpt_emu_swap(&f.sp, w.sched_sp);
  __builtin_unreachable();
}

void fiber_main(Fiber* f) {
  Worker& w = *tls_worker;
  w.launch->body(w.launch->ctx);
  (void)f;
  fiber_exit(w);
}

void init_stack(Fiber& f) {
  uint8_t* top = f.stack->base + f.stack->len;
  auto* sp = reinterpret_cast<uint64_t*>(top - 64);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memset(sp, 0, 64);
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<uint8_t*>(sp) + 4, &fpucw, 2);
  sp[3] = reinterpret_cast<uint64_t>(&fiber_main);  // r13
  sp[4] = reinterpret_cast<uint64_t>(&f);           // r12
  sp[7] = reinterpret_cast<uint64_t>(&fastgpt_emu_start);
  f.sp = sp;
}

std::string deadlock_report(const Worker& w) {
  std::string s = "deadlock: every thread of the block waits and none can go on;";
  int shown = 0;
  std::string last_reason;
  for (int t = 0; t < w.nthreads && shown < 4; ++t) {
    const Fiber& f = *w.fibers[t];
    std::string reason;
    if (f.state == State::kBarrier) {
      reason = "waits at __syncthreads";
    } else if (f.state == State::kWarp) {
      const WarpState& ws = w.warps[t / 32];
      reason = std::string("waits in ") + ws.what + " for lanes that never arrive";
    } else {
      continue;
    }
    if (reason == last_reason) continue;
    last_reason = reason;
    s += " thread " + ids_str(thread_of(w, t)) + " " + reason + ";";
    ++shown;
  }
  s += " " + std::to_string(w.done) + " of " + std::to_string(w.nthreads) + " threads exited (" + w.launch->kernel +
       ": block " + ids_str(w.block_idx) + ")";
  return s;
}

SharedWindow& window(Worker& w, const void* key, size_t bytes) {
  for (SharedWindow& s : w.windows) {
    if (s.key == key && s.bytes == bytes) return s;
  }
  const size_t rounded = (bytes + 15) / 16 * 16;
  SharedWindow s{key, bytes, std::make_unique<Guarded>(rounded, false), nullptr, 0};
  s.ptr = s.mem->guard - rounded;
  w.windows.push_back(std::move(s));
  return w.windows.back();
}

uint8_t* touch(Worker& w, SharedWindow& s) {
  if (s.block != w.block_serial) {
    std::memset(s.ptr, 0xff, (s.bytes + 15) / 16 * 16);
    s.block = w.block_serial;
  }
  return s.ptr;
}

const char g_dynamic_key = 0;

void run_block(Worker& w, uint3 bidx) {
  const LaunchInfo& L = *w.launch;
  w.block_idx = bidx;
  w.block_serial = ++g_block_serial;
  w.done = 0;
  w.barrier_arrived = 0;
  w.last = -1;
  const int n = w.nthreads;
  std::fill(w.runnable.begin(), w.runnable.end(), 0);
  for (int t = 0; t < n; ++t) {
    Fiber& f = *w.fibers[t];
    f.ids.thread_idx = thread_of(w, t);
    f.ids.block_idx = bidx;
    f.ids.block_dim = L.block;
    f.ids.grid_dim = L.grid;
    f.state = State::kRunnable;
    f.tid = t;
    f.copies.clear();
    f.group_end.clear();
    init_stack(f);
    set_runnable(w, t, true);
  }
  for (size_t i = 0; i < w.warps.size(); ++i) {
    WarpState& ws = w.warps[i];
    ws.arrived = ws.mask = ws.exited = 0;
    ws.what = nullptr;
    const int lanes = std::min(32, n - static_cast<int>(i) * 32);
    ws.present = lanes == 32 ? ~0u : (1u << lanes) - 1;
  }
  touch(w, window(w, &g_dynamic_key, L.smem));
  while (!w.failed) {
    const int t = pick(w);
    if (t < 0) {
      if (w.done == n) return;
      w.failed = true;
      w.error = deadlock_report(w);
      return;
    }
    w.last = t;
    w.cur = w.fibers[t].get();
    tls_ids = &w.cur->ids;
    fastgpt_emu_swap(&w.sched_sp, w.cur->sp);
    w.cur = nullptr;
  }
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  Worker* w = tls_worker;
  if (w != nullptr && w->cur != nullptr) {
    const void* a = info->si_addr;
    char buf[160];
    std::string what;
    if (w->cur->stack->guards(a)) {
      what = "stack overflow of the thread's fiber";
    } else {
      for (const SharedWindow& s : w->windows) {
        if (s.mem->guards(a)) {
          std::snprintf(buf, sizeof buf, "out-of-bounds shared memory access at %p, past the end of a %zu-byte %s window", a,
                        s.bytes, s.key == &g_dynamic_key ? "dynamic __shared__" : "static __shared__");
          what = buf;
        }
      }
      if (what.empty()) {
        std::snprintf(buf, sizeof buf, "invalid memory access at %p (%s; out of bounds of a buffer?)", a,
                      sig == SIGSEGV ? "SIGSEGV" : "SIGBUS");
        what = buf;
      }
    }
    abort_block(*w, what + " at " + where(*w, w->cur->tid));
  }
  const struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (prev.sa_flags & SA_SIGINFO) {
    prev.sa_sigaction(sig, info, uctx);
  } else if (prev.sa_handler == SIG_DFL || prev.sa_handler == SIG_IGN) {
    sigaction(sig, &prev, nullptr);  // the fault repeats on return and takes its default action
  } else {
    prev.sa_handler(sig);
  }
}

void install_signals() {
  struct sigaction sa {};
  sa.sa_sigaction = &on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_prev_segv);
  sigaction(SIGBUS, &sa, &g_prev_bus);
}

std::unique_ptr<Worker> checkout() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool.empty()) return std::make_unique<Worker>();
  std::unique_ptr<Worker> w = std::move(g_pool.back());
  g_pool.pop_back();
  return w;
}

void checkin(std::unique_ptr<Worker> w) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool.push_back(std::move(w));
}

void prepare(Worker& w, const LaunchInfo& L) {
  w.launch = &L;
  w.failed = false;
  w.error.clear();
  w.nthreads = static_cast<int>(L.block.x * L.block.y * L.block.z);
  while (static_cast<int>(w.fibers.size()) < w.nthreads) {
    auto f = std::make_unique<Fiber>();
    f->stack = std::make_unique<Guarded>(kStackBytes, true);
    w.fibers.push_back(std::move(f));
  }
  w.warps.assign((w.nthreads + 31) / 32, WarpState{});
  w.runnable.assign((w.nthreads + 63) / 64, 0);
  if (!w.altstack) w.altstack = std::make_unique<Guarded>(64 * 1024, true);
}

// One OS thread's share of the grid: blocks taken in order from `next` until none is left or
// some block failed.
void work(Worker& w, std::atomic<int64_t>& next, int64_t blocks, std::atomic<bool>& stop) {
  stack_t ss{};
  ss.ss_sp = w.altstack->base + page_size();
  ss.ss_size = w.altstack->len - page_size();
  stack_t old{};
  sigaltstack(&ss, &old);
  tls_worker = &w;
  const dim3 g = w.launch->grid;
  while (!stop.load(std::memory_order_relaxed)) {
    const int64_t b = next.fetch_add(1);
    if (b >= blocks) break;
    const uint3 bidx{static_cast<unsigned>(b % g.x), static_cast<unsigned>((b / g.x) % g.y),
                     static_cast<unsigned>(b / (static_cast<int64_t>(g.x) * g.y))};
    run_block(w, bidx);
    if (w.failed) stop.store(true);
  }
  tls_worker = nullptr;
  tls_ids = nullptr;
  sigaltstack(&old, nullptr);
}

}  // namespace

void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_dynamic_smem[kernel] = bytes;
}

LaneSlot& lane_slot() {
  Worker& w = *tls_worker;
  return w.warps[w.cur->tid / 32].slots[w.cur->tid % 32];
}

int lane_id() { return tls_worker->cur->tid % 32; }

void warp_collective(const char* what, uint32_t mask, WarpFn fn) {
  Worker& w = *tls_worker;
  Fiber& f = *w.cur;
  const int lane = f.tid % 32;
  WarpState& ws = w.warps[f.tid / 32];
  char m[16];
  std::snprintf(m, sizeof m, "0x%08x", mask);
  if (!(mask >> lane & 1u)) abort_block(w, std::string(what) + " with mask " + m + " excludes the calling lane at " + where(w, f.tid));
  if (mask & ~ws.present) abort_block(w, std::string(what) + " with mask " + m + " names lanes that do not exist at " + where(w, f.tid));
  if (mask & ws.exited) {
    abort_block(w, std::string(what) + " with mask " + m + " waits for lane " + std::to_string(__builtin_ctz(mask & ws.exited)) +
                       ", which has exited, at " + where(w, f.tid));
  }
  if (ws.arrived == 0) {
    ws.what = what;
    ws.mask = mask;
    ws.first = lane;
  } else if (ws.mask != mask || (ws.what != what && std::strcmp(ws.what, what) != 0)) {
    char m0[16];
    std::snprintf(m0, sizeof m0, "0x%08x", ws.mask);
    abort_block(w, std::string("divergent warp collective: lane ") + std::to_string(lane) + " is at " + what + " (mask " + m +
                       ") while lane " + std::to_string(ws.first) + " waits at " + ws.what + " (mask " + m0 + ") at " +
                       where(w, f.tid));
  }
  ws.arrived |= 1u << lane;
  if (ws.arrived != mask) {
    f.state = State::kWarp;
    set_runnable(w, f.tid, false);
    yield_to_scheduler(w);
    return;
  }
  fn(what, ws.slots, mask);
  ws.arrived = 0;
  const int base = f.tid - lane;
  for (uint32_t rest = mask & ~(1u << lane); rest != 0; rest &= rest - 1) {
    const int t = base + __builtin_ctz(rest);
    w.fibers[t]->state = State::kRunnable;
    set_runnable(w, t, true);
  }
}

void block_barrier() {
  Worker& w = *tls_worker;
  Fiber& f = *w.cur;
  if (w.done > 0) {
    abort_block(w, "__syncthreads after " + std::to_string(w.done) +
                       " threads of the block exited (a barrier not every thread reaches) at " + where(w, f.tid));
  }
  if (++w.barrier_arrived < w.nthreads) {
    f.state = State::kBarrier;
    set_runnable(w, f.tid, false);
    yield_to_scheduler(w);
    return;
  }
  w.barrier_arrived = 0;
  for (int t = 0; t < w.nthreads; ++t) {
    if (w.fibers[t]->state == State::kBarrier) {
      w.fibers[t]->state = State::kRunnable;
      set_runnable(w, t, true);
    }
  }
}

void fail(const char* message, int lane) {
  Worker& w = *tls_worker;
  const int tid = lane < 0 ? w.cur->tid : w.cur->tid - w.cur->tid % 32 + lane;
  abort_block(w, std::string(message) + " at " + where(w, tid));
}

void fail_not_emulated(const char* instruction) {
  fail((std::string("not emulated: ") + instruction).c_str());
}

void* static_shared(const void* key, size_t bytes) {
  Worker& w = *tls_worker;
  return touch(w, window(w, key, bytes));
}

void* dynamic_shared() {
  Worker& w = *tls_worker;
  return touch(w, window(w, &g_dynamic_key, w.launch->smem));
}

bool in_shared(const void* p, size_t bytes) {
  const Worker& w = *tls_worker;
  const uint8_t* a = static_cast<const uint8_t*>(p);
  for (const SharedWindow& s : w.windows) {
    if (s.block == w.block_serial && a >= s.ptr && a + bytes <= s.ptr + s.bytes) return true;
  }
  return false;
}

bool schedule_ahead() { return tls_worker->launch->ahead; }

void async_issue(const AsyncCopy& c) {
  Worker& w = *tls_worker;
  if (w.launch->ahead) {
    land(c);
  } else {
    w.cur->copies.push_back(c);
  }
}

void async_commit() {
  Fiber& f = *tls_worker->cur;
  if (!tls_worker->launch->ahead) f.group_end.push_back(f.copies.size());
}

void async_wait(int pending_groups) {
  Fiber& f = *tls_worker->cur;
  const int groups = static_cast<int>(f.group_end.size());
  if (groups <= pending_groups) return;
  const int landed = groups - pending_groups;
  const size_t end = f.group_end[landed - 1];
  for (size_t i = 0; i < end; ++i) land(f.copies[i]);
  f.copies.erase(f.copies.begin(), f.copies.begin() + static_cast<std::ptrdiff_t>(end));
  f.group_end.erase(f.group_end.begin(), f.group_end.begin() + landed);
  for (size_t& e : f.group_end) e -= end;
}

void shfl_fn(const char* what, LaneSlot* slots, uint32_t mask) {
  uint32_t out[32][2];
  for (uint32_t rest = mask; rest != 0; rest &= rest - 1) {
    const int l = __builtin_ctz(rest);
    const int width = static_cast<int>(slots[l].in[2]);
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("shfl.sync: width must be a power of 2 up to 32", l);
    const int seg = l & ~(width - 1);
    const int arg = slots[l].arg;
    int src = l;
    if (std::strcmp(what, "shfl.sync.idx") == 0) {
      src = seg + (arg & (width - 1));
    } else if (std::strcmp(what, "shfl.sync.up") == 0) {
      src = l - arg >= seg ? l - arg : l;
    } else if (std::strcmp(what, "shfl.sync.down") == 0) {
      src = l + arg < seg + width ? l + arg : l;
    } else {
      src = (l ^ arg) < seg + width ? (l ^ arg) : l;
    }
    if (!(mask >> src & 1u)) fail((std::string(what) + ": reads lane " + std::to_string(src) + ", outside the mask").c_str(), l);
    out[l][0] = slots[src].in[0];
    out[l][1] = slots[src].in[1];
  }
  for (uint32_t rest = mask; rest != 0; rest &= rest - 1) {
    const int l = __builtin_ctz(rest);
    slots[l].out[0] = out[l][0];
    slots[l].out[1] = out[l][1];
  }
}

void ballot_fn(const char*, LaneSlot* slots, uint32_t mask) {
  uint32_t bits = 0;
  for (uint32_t rest = mask; rest != 0; rest &= rest - 1) {
    const int l = __builtin_ctz(rest);
    if (slots[l].in[0] != 0) bits |= 1u << l;
  }
  for (uint32_t rest = mask; rest != 0; rest &= rest - 1) slots[__builtin_ctz(rest)].out[0] = bits;
}

void run_grid(const char* kernel, const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem, GridBody body,
              const void* ctx) {
  const char* env = std::getenv("FASTGPT_CUDA_EMULATE_SCHEDULE");
  const std::string schedule = env == nullptr || *env == '\0' ? "interleaved" : env;
  TORCH_CHECK(schedule == "interleaved" || schedule == "ahead", "FASTGPT_CUDA_EMULATE_SCHEDULE=", schedule,
              " is not a schedule (interleaved, ahead)");
  const int64_t threads = static_cast<int64_t>(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= 1024 && block.z <= 64, "fastgpt CUDA emulator: ", kernel, ": block ",
              block.x, "x", block.y, "x", block.z, " is not a valid block (1 to 1024 threads, z <= 64)");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535, "fastgpt CUDA emulator: ",
              kernel, ": grid ", grid.x, "x", grid.y, "x", grid.z, " is not a valid grid");
  {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    const auto it = g_max_dynamic_smem.find(kernel_id);
    const size_t allowed = it == g_max_dynamic_smem.end() ? kDefaultSharedBytes : static_cast<size_t>(it->second);
    TORCH_CHECK(dynamic_smem <= allowed && dynamic_smem <= kMaxSharedBytes, "fastgpt CUDA emulator: ", kernel, " launched with ",
                dynamic_smem, " bytes of dynamic shared memory; allowed ", std::min(allowed, kMaxSharedBytes),
                " (above 48 KB only after cudaFuncSetAttribute(MaxDynamicSharedMemorySize), at most 227 KB)");
  }
  std::call_once(g_signals_once, install_signals);
  const LaunchInfo L{kernel, grid, block, dynamic_smem, schedule == "ahead", body, ctx};
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  const int nworkers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, at::get_num_threads())));
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < nworkers; ++i) {
    workers.push_back(checkout());
    prepare(*workers.back(), L);
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads_;
  for (int i = 1; i < nworkers; ++i) threads_.emplace_back(work, std::ref(*workers[i]), std::ref(next), blocks, std::ref(stop));
  work(*workers[0], next, blocks, stop);
  for (std::thread& t : threads_) t.join();
  std::string error;
  for (auto& w : workers) {
    if (w->failed && error.empty()) error = w->error;
    w->launch = nullptr;
    checkin(std::move(w));
  }
  TORCH_CHECK(error.empty(), "fastgpt CUDA emulator: ", error);
}

}  // namespace fastgpt_emu
