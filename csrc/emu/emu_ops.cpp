// Test-only ops of the emulated build (torch.ops.fastgpt_emu.*): the emulator's self-test, its
// fault kernels, and buffers that end at an inaccessible page.
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <sys/mman.h>
#include <torch/library.h>
#include <unistd.h>

#include <string>

#include "emu/faults.h"
#include "emu/selftest.h"

namespace fastgpt {
namespace {

at::Tensor mma_selftest(const at::Tensor& a, const at::Tensor& b, int64_t mode) {
  TORCH_CHECK(a.dtype() == b.dtype() && (a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16),
              "fastgpt_emu.mma_selftest: a and b must both be float16 or bfloat16");
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == at::IntArrayRef({16, 16}),
              "fastgpt_emu.mma_selftest: a and b must be 16 x 16");
  TORCH_CHECK(mode >= 0 && mode < kSelftestModes, "fastgpt_emu.mma_selftest: mode ", mode, " (0 to ",
              kSelftestModes - 1, ")");
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor c = at::empty({16, 16}, a.options().dtype(at::kFloat));
  mma_selftest_launch(a.scalar_type() == at::kBFloat16, ac.data_ptr(), bc.data_ptr(), c.data_ptr<float>(),
                      static_cast<int>(mode), nullptr);
  return c;
}

// A 1-D tensor whose last byte is followed by a PROT_NONE page.
at::Tensor guarded_empty(int64_t numel, at::ScalarType dtype) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  const size_t len = (bytes + page - 1) / page * page + page;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(m != MAP_FAILED, "fastgpt_emu.guarded_empty: mmap failed");
  uint8_t* guard = static_cast<uint8_t*>(m) + len - page;
  TORCH_CHECK(mprotect(guard, page, PROT_NONE) == 0, "fastgpt_emu.guarded_empty: mprotect failed");
  return at::from_blob(guard - bytes, {numel}, [m, len](void*) { munmap(m, len); },
                       at::TensorOptions().dtype(dtype));
}

void fault(const std::string& kind, const at::Tensor& x) {
  static const std::pair<const char*, FaultKind> kKinds[] = {
      {"oob_global", FaultKind::kOobGlobal},           {"oob_shared", FaultKind::kOobShared},
      {"deadlock", FaultKind::kDeadlock},              {"barrier_in_branch", FaultKind::kBarrierInBranch},
      {"divergent_shuffle", FaultKind::kDivergentShuffle}, {"exit_in_collective", FaultKind::kExitInCollective}};
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.numel() == 127, "fastgpt_emu.fault: x must be 127 float32 elements");
  at::Tensor out = at::empty({1}, x.options());
  for (const auto& [name, k] : kKinds) {
    if (kind == name) return fault_launch(k, x.data_ptr<float>(), out.data_ptr<float>());
  }
  TORCH_CHECK(false, "fastgpt_emu.fault: unknown kind '", kind, "'");
}

}  // namespace
}  // namespace fastgpt

TORCH_LIBRARY(fastgpt_emu, m) {
  m.def("mma_selftest(Tensor a, Tensor b, int mode) -> Tensor", &fastgpt::mma_selftest);
  m.def("guarded_empty(int numel, ScalarType dtype) -> Tensor", &fastgpt::guarded_empty);
  m.def("fault(str kind, Tensor x) -> ()", &fastgpt::fault);
}
