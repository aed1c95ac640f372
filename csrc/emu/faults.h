// Kernels with deliberate bugs (faults.cu), for the tests of the emulator's error reports.
#pragma once

namespace fastgpt {

enum class FaultKind { kOobGlobal, kOobShared, kDeadlock, kBarrierInBranch, kDivergentShuffle, kExitInCollective };

// X: a buffer of 127 floats (kOobGlobal reads one past it); Out: one float.
void fault_launch(FaultKind kind, const float* X, float* Out);

}  // namespace fastgpt
