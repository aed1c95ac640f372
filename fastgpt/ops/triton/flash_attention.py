"""Flash attention, forward and backward, in Triton.

    S = q @ k^T * scale  (+ causal mask: key j > query i gets -inf)
    P = softmax(S)        out = P @ v
    dV = P^T dO    dP = dO V^T    dS = P * (dP - rowsum(dO * out))    dQ = dS K * scale    dK = dS^T Q * scale

Shapes: q (B, Hq, T, D), k and v (B, Hkv, T, D) with Hq % Hkv == 0 (GQA; MQA when Hkv == 1);
returns (B, Hq, T, D) like ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)``. Must
match :func:`fastgpt.ops.reference.flash_attention` within the tolerance PyTorch itself achieves
in the same dtype.

How:
- forward: one program per (query block, batch x query head) makes a single pass over the K/V
  blocks with an online softmax in base 2 (log2(e) folded into the scale, so every exponential
  is an ``exp2``), accumulating in fp32. Nothing of size T x T is ever stored: memory is O(T).
  It saves the log-sum-exp of each row (natural log as the CUDA kernels, fp32, (B, Hq, T)) for the
  backward.
- causal: key blocks entirely above the diagonal are skipped by the loop bounds; only the
  diagonal blocks (and the ragged last block when T is not a multiple of the block) are masked.
- backward: a preprocess kernel computes delta = rowsum(dO * out); one kernel computes dK and dV
  (a program per key block of one KV head, looping over the query heads of its group and their
  query blocks, so GQA gradients are summed in registers), a second computes dQ (a program per
  query block, looping over key blocks). No atomics anywhere: the backward is deterministic.
- any T >= 1 (masks, no divisibility), any head dim up to 256 (padded to the next power of two
  >= 16 inside, with masks), any strides (SDPA layout or a transposed view of (B, T, H, D)),
  K/V shared by a group are read in place, never repeated.
- block sizes are autotuned per head-dim bucket on GPU, from separate candidates for fp32 inputs;
  under ``TRITON_INTERPRET=1`` one fixed small configuration is used.

Limits: CUDA tensors (CPU tensors only under the Triton interpreter); q, k, v of one dtype among
fp16, bf16, fp32 (bf16 under the interpreter only where it computes bf16 by value, see
:func:`fastgpt.ops.triton.interpreter_bf16_problem`); head dim <= 256; k/v as long as q (no
KV-cache decoding: S == T); per-head extents below 2^31 elements. fp32 inputs use IEEE fp32 dot products
(no TF32) so they are as accurate as PyTorch's fp32 attention, and slow. Outside these limits
:func:`unsupported_reason` names the reason: ``fastgpt.ops.flash_attention`` then raises
``ValueError`` for ``backend="triton"``, and ``auto`` falls back. Not twice differentiable.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from fastgpt.ops._backend import triton_interpreted
from fastgpt.ops._checks import attention_scalars_problem, attention_shapes_problem, attention_tensors_problem
from fastgpt.ops.triton import interpreter_bf16_problem

# read once: TRITON_INTERPRET only takes effect if set before triton is imported
_INTERPRET = triton_interpreted()
MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * log2(e))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Autotuning candidates per padded head dim: (BLOCK_M, BLOCK_N, num_warps, num_stages). The fwd
# and dq kernels need BLOCK_M % BLOCK_N == 0, the dk/dv kernel BLOCK_N % BLOCK_M == 0. Each list
# ends with a small configuration that fits in shared memory even for fp32 at D = 256.
_CONFIGS = {
    "fwd": {
        64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
        128: [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 2)],
        256: [(64, 64, 8, 2), (64, 32, 4, 2), (32, 32, 4, 1)],
    },
    "dkdv": {
        64: [(32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 2)],
        128: [(32, 128, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2)],
        256: [(16, 64, 8, 2), (32, 64, 8, 1), (16, 32, 4, 1)],
    },
    "dq": {
        64: [(128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
        128: [(128, 32, 8, 2), (64, 32, 4, 2), (64, 16, 4, 2)],
        256: [(64, 16, 8, 2), (64, 32, 8, 1), (32, 16, 4, 1)],
    },
}
# fp32 inputs take the dot products on CUDA cores (no TF32), which hold far more registers per
# tile: the fp16/bf16 candidates above spill kilobytes per thread there. These are the ones that
# ptxas (sm_90) compiles without spilling (benchmarks/resources.py).
_CONFIGS_FP32 = {
    "fwd": {
        64: [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
        128: [(32, 16, 8, 2), (16, 16, 8, 2), (16, 16, 4, 2)],
        256: [(32, 16, 8, 2), (16, 16, 8, 2), (16, 16, 4, 2)],
    },
    "dkdv": {
        64: [(32, 32, 8, 2), (16, 32, 8, 2), (16, 16, 4, 2)],
        128: [(16, 32, 8, 2), (16, 32, 8, 1), (16, 16, 8, 2)],
        256: [(16, 16, 8, 2)],
    },
    "dq": {
        64: [(64, 32, 8, 2), (32, 32, 4, 2), (32, 16, 4, 2)],
        128: [(64, 16, 8, 2), (32, 16, 8, 2), (16, 16, 4, 2)],
        256: [(32, 16, 8, 2), (16, 16, 8, 2), (16, 16, 4, 2)],
    },
}
# Under the interpreter: small, unequal blocks so that tests with T ~ 17..64 still cross block
# boundaries, ragged tails and multi-block diagonals.
_INTERPRET_CONFIG = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


@triton.jit
def _load_rows(
    Base,  # pointer to row 0, column 0 of a (T, HEAD_DIM) matrix
    offs_r,  # row indices to load
    offs_d,  # column indices, arange(BLOCK_D)
    stride_r,  # row stride
    stride_d,  # column stride
    T,  # number of valid rows
    HEAD_DIM: tl.constexpr,  # number of valid columns
    BLOCK_D: tl.constexpr,  # HEAD_DIM padded to a power of two
    MASK_ROWS: tl.constexpr,  # rows past T may be in the block
):
    ptrs = Base + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d
    if MASK_ROWS:
        return tl.load(ptrs, mask=(offs_r[:, None] < T) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    elif BLOCK_D != HEAD_DIM:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _flash_attn_fwd_inner(
    acc, m_i, l_i,  # running fp32 output (BLOCK_M, BLOCK_D), row max and row sum (base 2)
    q,  # query block (BLOCK_M, BLOCK_D)
    K, V,  # this (batch, kv head)'s key and value base pointers
    stride_kt, stride_kd, stride_vt, stride_vd,  # key / value strides over time and head dim
    offs_m,  # query row indices of this block
    lo, hi,  # key range [lo, hi) visited, in steps of BLOCK_N
    T,  # sequence length
    qk_scale,  # softmax scale * log2(e)
    CAUSAL: tl.constexpr,  # apply the causal mask (only matters when MASKED)
    MASKED: tl.constexpr,  # the range holds masked keys (diagonal or past T); False skips masks
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32), ignored for fp16/bf16
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(V, offs_n, offs_d, stride_vt, stride_vd, T, HEAD_DIM, BLOCK_D, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        if MASKED:
            valid = offs_n[None, :] < T
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(valid, s, float("-inf"))
        # online softmax: rescale what was accumulated under the old max. Every row sees a valid
        # key in its first visited block, so m_new is finite and no (-inf) - (-inf) NaN appears.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _flash_attn_fwd_kernel(
    Q, K, V,  # inputs: q (B, H, T, D), k and v (B, H // GROUP, T, D), any strides
    Out,  # output (B, H, T, D), q's dtype
    Lse,  # output: base-2 log-sum-exp of each score row, fp32, contiguous (B, H, T)
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    H,  # number of query heads
    T,  # sequence length (queries and keys)
    qk_scale,  # softmax scale * log2(e)
    T_BUCKET,  # unused in the body: the autotuning key (next power of two of T)
    GROUP: tl.constexpr,  # query heads per kv head
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
    CAUSAL: tl.constexpr,  # causal mask
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per loop step; BLOCK_M % BLOCK_N == 0
):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    qk_scale = tl.cast(qk_scale, tl.float32)
    # 64-bit batch/head offsets: B * H * T * D may exceed 2^31
    Q += off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    K += off_b.to(tl.int64) * stride_kb + (off_h // GROUP).to(tl.int64) * stride_kh
    V += off_b.to(tl.int64) * stride_vb + (off_h // GROUP).to(tl.int64) * stride_vh
    Out += off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    Lse += off_bh.to(tl.int64) * T

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, True)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

    # unmasked blocks: causal -> keys strictly before this query block; else every full block
    if CAUSAL:
        full_hi = start_m * BLOCK_M
        diag_hi = tl.minimum(full_hi + BLOCK_M, T)
    else:
        full_hi = (T // BLOCK_N) * BLOCK_N
        diag_hi = T
    acc, m_i, l_i = _flash_attn_fwd_inner(
        acc, m_i, l_i, q, K, V, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, 0, full_hi, T, qk_scale,
        CAUSAL, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )
    # masked blocks: the diagonal (causal) or the ragged tail past the last full block
    acc, m_i, l_i = _flash_attn_fwd_inner(
        acc, m_i, l_i, q, K, V, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, full_hi, diag_hi, T, qk_scale,
        CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )

    acc = acc / l_i[:, None]
    o_ptrs = Out + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=(offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM))
    # stored in natural log, the CUDA kernels' convention: log2-sum-exp2 * ln(2)
    tl.store(Lse + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=offs_m < T)


@triton.jit
def _flash_attn_bwd_preprocess_kernel(
    Out, DOut,  # forward output and its gradient, (B, H, T, D), any strides
    Delta,  # output: rowsum(dO * out), fp32, contiguous (B, H, T)
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_dob, stride_doh, stride_dot, stride_dod,
    H, T,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
):
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    Out += off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh
    DOut += off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    o = _load_rows(Out, offs_m, offs_d, stride_ot, stride_od, T, HEAD_DIM, BLOCK_D, True).to(tl.float32)
    do = _load_rows(DOut, offs_m, offs_d, stride_dot, stride_dod, T, HEAD_DIM, BLOCK_D, True).to(tl.float32)
    tl.store(Delta + off_bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _flash_attn_bwd_dkdv_inner(
    dk, dv,  # fp32 accumulators (BLOCK_N, BLOCK_D)
    k, v,  # this program's key and value block (BLOCK_N, BLOCK_D)
    Q, DOut, Lse, Delta,  # one query head's base pointers
    stride_qt, stride_qd, stride_dot, stride_dod,
    offs_n,  # key indices of this block
    lo, hi,  # query range [lo, hi), in steps of BLOCK_M
    T, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(Q, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, MASKED)
        do = _load_rows(DOut, offs_m, offs_d, stride_dot, stride_dod, T, HEAD_DIM, BLOCK_D, MASKED)
        if MASKED:
            lse = tl.load(Lse + offs_m, mask=offs_m < T, other=0.0)
            delta = tl.load(Delta + offs_m, mask=offs_m < T, other=0.0)
        else:
            lse = tl.load(Lse + offs_m)
            delta = tl.load(Delta + offs_m)
        # recompute P^T from the saved base-2 log-sum-exp: no running max needed
        pT = tl.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            valid = offs_m[None, :] < T
            if CAUSAL:
                valid = valid & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(valid, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _flash_attn_bwd_dkdv_kernel(
    Q, K, V, DOut,  # inputs, (B, H or H // GROUP, T, D), any strides
    Lse, Delta,  # fp32 (B, H, T): forward log-sum-exp (base 2) and rowsum(dO * out)
    DK, DV,  # outputs, like k and v
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dkb, stride_dkh, stride_dkt, stride_dkd,
    stride_dvb, stride_dvh, stride_dvt, stride_dvd,
    H_KV,  # number of kv heads
    T,
    sm_scale,  # softmax scale
    qk_scale,  # softmax scale * log2(e)
    T_BUCKET,  # unused in the body: the autotuning key
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per loop step
    BLOCK_N: tl.constexpr,  # keys per program; BLOCK_N % BLOCK_M == 0
):
    start_n = tl.program_id(0)
    off_bhk = tl.program_id(1)
    off_b = off_bhk // H_KV
    off_hk = off_bhk % H_KV
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    K += off_b.to(tl.int64) * stride_kb + off_hk.to(tl.int64) * stride_kh
    V += off_b.to(tl.int64) * stride_vb + off_hk.to(tl.int64) * stride_vh
    DK += off_b.to(tl.int64) * stride_dkb + off_hk.to(tl.int64) * stride_dkh
    DV += off_b.to(tl.int64) * stride_dvb + off_hk.to(tl.int64) * stride_dvh

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # key rows past T load as zeros; their (garbage) gradients are never stored
    k = _load_rows(K, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V, offs_n, offs_d, stride_vt, stride_vd, T, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # causal: queries in [diag_lo, diag_lo + BLOCK_N) straddle the diagonal (masked), later ones see
    # every key of the block; earlier ones see none and are skipped. Non-causal: all, tail masked.
    if CAUSAL:
        diag_lo = start_n * BLOCK_N
        full_lo = tl.minimum(diag_lo + BLOCK_N, T)
    else:
        diag_lo = 0
        full_lo = 0
    full_hi = full_lo + ((T - full_lo) // BLOCK_M) * BLOCK_M
    # the group's query heads share this kv head: sum their contributions here, in order
    for g in range(GROUP):
        off_bh = off_b * (H_KV * GROUP) + off_hk * GROUP + g
        off_h = off_hk * GROUP + g
        Qh = Q + off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
        DOh = DOut + off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
        Lseh = Lse + off_bh.to(tl.int64) * T
        Deltah = Delta + off_bh.to(tl.int64) * T
        dk, dv = _flash_attn_bwd_dkdv_inner(
            dk, dv, k, v, Qh, DOh, Lseh, Deltah, stride_qt, stride_qd, stride_dot, stride_dod, offs_n,
            diag_lo, full_lo, T, qk_scale, CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION,
        )
        dk, dv = _flash_attn_bwd_dkdv_inner(
            dk, dv, k, v, Qh, DOh, Lseh, Deltah, stride_qt, stride_qd, stride_dot, stride_dod, offs_n,
            full_lo, full_hi, T, qk_scale, CAUSAL, False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION,
        )
        dk, dv = _flash_attn_bwd_dkdv_inner(
            dk, dv, k, v, Qh, DOh, Lseh, Deltah, stride_qt, stride_qd, stride_dot, stride_dod, offs_n,
            full_hi, T, T, qk_scale, CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION,
        )

    mask = (offs_n[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + offs_n[:, None] * stride_dkt + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + offs_n[:, None] * stride_dvt + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _flash_attn_bwd_dq_inner(
    dq,  # fp32 accumulator (BLOCK_M, BLOCK_D)
    q, do, lse, delta,  # this program's query rows: q, dO, log-sum-exp (base 2), rowsum(dO * out)
    K, V,  # this (batch, kv head)'s key and value base pointers
    stride_kt, stride_kd, stride_vt, stride_vd,
    offs_m,  # query indices of this block
    lo, hi,  # key range [lo, hi), in steps of BLOCK_N
    T, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(K, offs_n, offs_d, stride_kt, stride_kd, T, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(V, offs_n, offs_d, stride_vt, stride_vd, T, HEAD_DIM, BLOCK_D, MASKED)
        p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            valid = offs_n[None, :] < T
            if CAUSAL:
                valid = valid & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(valid, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _flash_attn_bwd_dq_kernel(
    Q, K, V, DOut,  # inputs, any strides
    Lse, Delta,  # fp32 (B, H, T)
    DQ,  # output, like q
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_dob, stride_doh, stride_dot, stride_dod,
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    H, T,
    sm_scale,  # softmax scale
    qk_scale,  # softmax scale * log2(e)
    T_BUCKET,  # unused in the body: the autotuning key
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per loop step; BLOCK_M % BLOCK_N == 0
):
    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = off_bh // H
    off_h = off_bh % H
    sm_scale = tl.cast(sm_scale, tl.float32)
    qk_scale = tl.cast(qk_scale, tl.float32)
    Q += off_b.to(tl.int64) * stride_qb + off_h.to(tl.int64) * stride_qh
    DOut += off_b.to(tl.int64) * stride_dob + off_h.to(tl.int64) * stride_doh
    DQ += off_b.to(tl.int64) * stride_dqb + off_h.to(tl.int64) * stride_dqh
    K += off_b.to(tl.int64) * stride_kb + (off_h // GROUP).to(tl.int64) * stride_kh
    V += off_b.to(tl.int64) * stride_vb + (off_h // GROUP).to(tl.int64) * stride_vh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q, offs_m, offs_d, stride_qt, stride_qd, T, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DOut, offs_m, offs_d, stride_dot, stride_dod, T, HEAD_DIM, BLOCK_D, True)
    # rows past T: lse = 0 keeps their p finite; their dq is never stored
    lse = tl.load(Lse + off_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(Delta + off_bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        full_hi = start_m * BLOCK_M
        diag_hi = tl.minimum(full_hi + BLOCK_M, T)
    else:
        full_hi = (T // BLOCK_N) * BLOCK_N
        diag_hi = T
    dq = _flash_attn_bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, 0, full_hi, T, qk_scale,
        CAUSAL, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )
    dq = _flash_attn_bwd_dq_inner(
        dq, q, do, lse, delta, K, V, stride_kt, stride_kd, stride_vt, stride_vd, offs_m, full_hi, diag_hi, T,
        qk_scale, CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION,
    )
    dq_ptrs = DQ + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HEAD_DIM)
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask)


_KERNELS = {"fwd": _flash_attn_fwd_kernel, "dkdv": _flash_attn_bwd_dkdv_kernel, "dq": _flash_attn_bwd_dq_kernel}


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


@functools.cache
def _autotuned(name: str, block_d: int, fp32: bool) -> triton.runtime.Autotuner:
    pairs = (_CONFIGS_FP32 if fp32 else _CONFIGS)[name][max(64, block_d)]
    # the unmasked loops step over whole blocks that must not reach into the diagonal
    assert all((n % m if name == "dkdv" else m % n) == 0 for m, n, _, _ in pairs), pairs
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]
    return triton.autotune(configs=configs, key=["T_BUCKET", "HEAD_DIM", "CAUSAL"])(_KERNELS[name])


def _t_bucket(T: int) -> int:
    """Autotuning key for length T: its next power of two, so varying lengths (eval, prefill)
    tune once per octave rather than once per length (a symbolic T under torch.compile is kept)."""
    return 1 << (T - 1).bit_length() if isinstance(T, int) else T


def _kernel(name: str, head_dim: int, dtype: torch.dtype) -> tuple[object, dict]:
    """The kernel to launch and the launch options it still needs (none when autotuned)."""
    if _INTERPRET:
        block_m, block_n = _INTERPRET_CONFIG[name]
        return _KERNELS[name], {"BLOCK_M": block_m, "BLOCK_N": block_n}
    return _autotuned(name, _block_d(head_dim), dtype == torch.float32), {}


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


@triton_op("fastgpt::flash_attn_fwd_triton", mutates_args=())
def flash_attn_fwd(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float,
    window: int | None, softcap: float | None, doc_ids: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Forward: ``(out (B, Hq, T, D), lse (B, Hq, T) fp32, natural log)``; inputs already validated."""
    B, H, T, D = q.shape
    # out is a (B, H, T, D) view of (B, T, H, D) memory, so the usual transpose back is free
    out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    kernel, options = _kernel("fwd", D, q.dtype)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(T, meta["BLOCK_M"]), B * H)

    wrap_triton(kernel)[grid](
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), H, T, scale * _LOG2E, _t_bucket(T),
        GROUP=H // k.shape[1], HEAD_DIM=D, BLOCK_D=_block_d(D), CAUSAL=causal,
        DOT_PRECISION=_dot_precision(q.dtype), **options,
    )
    return out, lse


@triton_op("fastgpt::flash_attn_bwd_triton", mutates_args=())
def flash_attn_bwd(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    window: int | None, softcap: float | None, doc_ids: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Backward: ``(dq, dk, dv)`` shaped and strided like q, k, v; dk/dv summed over each group."""
    B, H, T, D = q.shape
    H_KV = k.shape[1]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    block_d = _block_d(D)
    lse = lse * _LOG2E  # the kernels work in base 2
    delta = torch.empty_like(lse)
    pre_block = 16 if _INTERPRET else 64
    wrap_triton(_flash_attn_bwd_preprocess_kernel)[(triton.cdiv(T, pre_block), B * H)](
        out, dout, delta, *out.stride(), *dout.stride(), H, T, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=pre_block,
    )
    common = dict(HEAD_DIM=D, BLOCK_D=block_d, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype))

    kernel, options = _kernel("dkdv", D, q.dtype)

    def grid_dkdv(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(T, meta["BLOCK_N"]), B * H_KV)

    wrap_triton(kernel)[grid_dkdv](
        q, k, v, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
        H_KV, T, scale, scale * _LOG2E, _t_bucket(T), GROUP=H // H_KV, **common, **options,
    )

    kernel, options = _kernel("dq", D, q.dtype)

    def grid_dq(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(T, meta["BLOCK_M"]), B * H)

    wrap_triton(kernel)[grid_dq](
        q, k, v, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
        H, T, scale, scale * _LOG2E, _t_bucket(T), GROUP=H // H_KV, **common, **options,
    )
    return dq, dk, dv


def unsupported_reason(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
    window: int | None = None, softcap: float | None = None, doc_ids: Tensor | None = None,
) -> str | None:
    """Why these inputs are outside the kernel's limits (None when they are supported)."""
    reason = attention_tensors_problem(q, k, v) or attention_scalars_problem(causal, scale)
    if reason is not None:
        return reason
    if window is not None or softcap is not None or doc_ids is not None:
        return "window, softcap and doc_ids are not supported by the Triton kernels yet"
    if q.device.type != "cuda" and not (q.device.type == "cpu" and _INTERPRET):
        return f"tensors are on {q.device}; the Triton kernels need CUDA (or CPU under TRITON_INTERPRET=1)"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        return f"dtypes ({q.dtype}, {k.dtype}, {v.dtype}) must all be one of float16, bfloat16, float32"
    if q.dtype == torch.bfloat16 and _INTERPRET and interpreter_bf16_problem():
        return interpreter_bf16_problem()
    reason = attention_shapes_problem(q, k, v)
    if reason is not None:
        return reason
    D = q.shape[-1]
    if not 1 <= D <= MAX_HEAD_DIM:
        return f"head dim {D} is not supported (1..{MAX_HEAD_DIM})"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if (t.shape[2] - 1) * abs(t.stride(2)) + (D - 1) * abs(t.stride(3)) >= 2**31:
            return f"{name}'s per-head extent exceeds 2^31 elements (strides {t.stride()})"
    return None
