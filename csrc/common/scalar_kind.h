// The element types the kernels take, named without ATen so that kernel translation units stay
// light; host code maps at::ScalarType onto it with to_scalar_kind().
#pragma once

namespace fastgpt {

enum class ScalarKind { kFloat32, kFloat16, kBFloat16 };

}  // namespace fastgpt
