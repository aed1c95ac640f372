// Shared-memory tiles of attention rows and the mma fragments read from them.
//
// A tile holds ROWS x D elements (D = 64 or 128) row-major, with the 16-byte chunks of each row
// XOR-swizzled by (row % 8): ldmatrix reads 8 rows of one logical chunk per phase, and the
// swizzle puts those 8 reads in 8 different bank groups (unswizzled, rows 128 or 256 bytes apart
// would all hit the same banks: an 8-way conflict).
#pragma once

#include "common/dtype.cuh"
#include "common/mma.cuh"

namespace fastgpt {

// Element offset of (row, 16-byte chunk) in a swizzled tile with D columns.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  static_assert(D % 64 == 0, "the swizzle needs at least 8 chunks per row");
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Issue cp.async copies of a ROWS x D tile starting at `gmem` (row stride `stride_row`); rows at
// or beyond `valid_rows` are zero-filled instead of read. The caller commits and waits.
template <typename T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile_async(T* smem, const T* gmem, int64_t stride_row, int valid_rows,
                                                int tid) {
  constexpr int CHUNKS_PER_ROW = D / 8;
  constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
  static_assert(CHUNKS % THREADS == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int i = 0; i < CHUNKS / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int row = c / CHUNKS_PER_ROW;
    const int chunk = c % CHUNKS_PER_ROW;
    const bool valid = row < valid_rows;
    const T* src = valid ? gmem + row * stride_row + chunk * 8 : gmem;
    cp_async_16(smem + swz<D>(row, chunk), src, valid);
  }
}

// A operand (16x16) of rows r0..r0+15, columns k0..k0+15 of a tile: a row-major matrix.
template <int D, typename T>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const T* tile, int r0, int k0, int lane) {
  const int row = r0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int chunk = (k0 >> 3) + (lane >> 4);
  ldmatrix_x4(a, tile + swz<D>(row, chunk));
}

// B operands of two adjacent n8 tiles when B[k][n] = tile[n][k] (e.g. K^T in Q K^T): tile rows
// n0..n0+15, columns k0..k0+15. b[0], b[1] serve n-tile n0; b[2], b[3] serve n-tile n0 + 8.
template <int D, typename T>
__device__ __forceinline__ void load_b_frag_nk(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  const int row = n0 + (lane & 7) + (lane >> 4) * 8;
  const int chunk = (k0 >> 3) + ((lane >> 3) & 1);
  ldmatrix_x4(b, tile + swz<D>(row, chunk));
}

// B operands of two adjacent n8 tiles when B[k][n] = tile[k][n] (e.g. V in P V): tile rows
// k0..k0+15, columns n0..n0+15, transposed by ldmatrix. Same register order as load_b_frag_nk.
template <int D, typename T>
__device__ __forceinline__ void load_b_frag_kn(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  const int row = k0 + (lane & 7) + ((lane >> 3) & 1) * 8;
  const int chunk = (n0 >> 3) + (lane >> 4);
  ldmatrix_x4_trans(b, tile + swz<D>(row, chunk));
}

// The A operand for k-step kk of a product whose left factor is a 16 x N fp32 accumulator
// (P or dS): columns 16kk..16kk+15 are n-tiles 2kk and 2kk+1, rounded to T.
template <typename T, int NT>
__device__ __forceinline__ void acc_to_a_frag(uint32_t (&a)[4], const float (&acc)[NT][4], int kk) {
  a[0] = pack2<T>(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = pack2<T>(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = pack2<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = pack2<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// Zero a warp's fp32 accumulator of NT n8 tiles.
template <int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// acc (16 x N) += A B^T over D columns, where A is rows a_r0..a_r0+15 of tile `a` and B is rows
// 0..N-1 of tile `b`, both D wide (e.g. S = Q K^T). The k loop over D is unrolled UNROLL times.
template <typename T, int D, int N, int UNROLL>
__device__ __forceinline__ void warp_mma_abt(float (&acc)[N / 8][4], const T* a, int a_r0, const T* b, int lane) {
#pragma unroll UNROLL
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t fa[4];
    load_a_frag<D>(fa, a, a_r0, kk * 16, lane);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t fb[4];
      load_b_frag_nk<D>(fb, b, np * 16, kk * 16, lane);
      mma_16816<T>(acc[2 * np], fa, fb[0], fb[1]);
      mma_16816<T>(acc[2 * np + 1], fa, fb[2], fb[3]);
    }
  }
}

// acc (16 x D) += P B, where P (16 x K) is a warp's fp32 accumulator, rounded to T as the A
// operand, and B is rows 0..K-1 of the D-wide tile `b` (e.g. O += P V).
template <typename T, int D, int K>
__device__ __forceinline__ void warp_mma_acc_b(float (&acc)[D / 8][4], const float (&p)[K / 8][4], const T* b,
                                               int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t fa[4];
    acc_to_a_frag<T>(fa, p, kk);
#pragma unroll
    for (int dt = 0; dt < D / 16; ++dt) {
      uint32_t fb[4];
      load_b_frag_kn<D>(fb, b, kk * 16, dt * 16, lane);
      mma_16816<T>(acc[2 * dt], fa, fb[0], fb[1]);
      mma_16816<T>(acc[2 * dt + 1], fa, fb[2], fb[3]);
    }
  }
}

// Store one warp's 16 x D fp32 accumulator (times `mul[0]` for rows 0-7 and `mul[1]` for rows
// 8-15) to rows 0..valid_rows-1 of `gmem`, staged through the warp's own 16 x D smem region so
// that global stores are whole 16-byte chunks.
template <typename T, int D>
__device__ __forceinline__ void store_acc_tile(const float (&acc)[D / 8][4], const float (&mul)[2], T* swarp,
                                               T* gmem, int64_t stride_row, int valid_rows, int lane) {
  const int g = lane >> 2;
  const int t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    *reinterpret_cast<uint32_t*>(swarp + swz<D>(g, nt) + 2 * t) = pack2<T>(acc[nt][0] * mul[0], acc[nt][1] * mul[0]);
    *reinterpret_cast<uint32_t*>(swarp + swz<D>(g + 8, nt) + 2 * t) =
        pack2<T>(acc[nt][2] * mul[1], acc[nt][3] * mul[1]);
  }
  __syncwarp();
#pragma unroll
  for (int c = lane; c < 16 * D / 8; c += 32) {
    const int row = c / (D / 8);
    const int chunk = c % (D / 8);
    if (row < valid_rows) {
      *reinterpret_cast<uint4*>(gmem + row * stride_row + chunk * 8) =
          *reinterpret_cast<const uint4*>(swarp + swz<D>(row, chunk));
    }
  }
}

}  // namespace fastgpt
