// Instantiates the flash-attention backward kernels for head dim 128 (fp16 and bf16, causal or not);
// one translation unit per (direction, head dim) keeps parallel builds short.
#include "flash_attn/flash_bwd_kernel.cuh"

namespace fastgpt {

void flash_attn_bwd_hdim128(const FlashParams& params, bool bf16, bool causal, cudaStream_t stream) {
  if (bf16) {
    if (causal) {
      launch_flash_attn_bwd<__nv_bfloat16, 128, true>(params, stream);
    } else {
      launch_flash_attn_bwd<__nv_bfloat16, 128, false>(params, stream);
    }
  } else {
    if (causal) {
      launch_flash_attn_bwd<__half, 128, true>(params, stream);
    } else {
      launch_flash_attn_bwd<__half, 128, false>(params, stream);
    }
  }
}

}  // namespace fastgpt
