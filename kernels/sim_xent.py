"""Fused similarity cross-entropy: softmax cross-entropy over `scale * q k^T + col_bias` in Triton.

The (M x P) logits never exist in memory. The forward streams column tiles through an online
softmax (FlashAttention-style) and keeps, per row, only the log-sum-exp and the positive count;
the backward recomputes each logits tile from q and k. Extra memory is O(M + P) beyond the inputs
and their gradients, which is what lets SimCLR run 2N = 131,072 rows on one GPU.

Dispatch (kernels/runtime.py): CUDA tensors -> Triton, CPU tensors -> the reference in
kernels/reference.py, TRITON_INTERPRET=1 -> Triton on the CPU. float64 always takes the reference:
it is the ground truth the tests compare against.
"""
from __future__ import annotations

import math
import os

import torch

from .reference import sim_xent_reference
from .runtime import HAVE_TRITON, INTERPRET, dot_precision, kernel_dtype, use_triton

REDUCTIONS = ("mean", "sum", "none")
QUICK_AUTOTUNE = os.environ.get("FASTSSL_AUTOTUNE") == "quick"

if HAVE_TRITON:
    import triton
    import triton.language as tl

    def _configs(quick: bool = QUICK_AUTOTUNE):
        """Tile shapes to autotune on a GPU; the interpreter takes one config (it cannot benchmark).

        FASTSSL_AUTOTUNE=quick (read at import) keeps only the first, the best general config, so GPU
        test runs do not spend minutes benchmarking. Every config compiles for sm_90 in every dtype
        without spilling registers (tests/kernels/test_compile_for_gpu.py checks it).
        """
        if INTERPRET:
            return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4)]
        # 128 x 64 tiles over two warpgroups: with 4 warps or 64 x 64 tiles some variant spilled (ptxas
        # capped 8-warp FMA (ieee) ones at 128 registers), and 128-wide column tiles spill the backward's
        # fp32 (tile x 128) accumulators. Three stages prefetch deeper; two leave shared memory free.
        configs = [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=s) for s in (3, 2)]
        return configs[:1] if quick else configs

    @triton.jit
    def _tile(ptr, idx, ok, stride, feats, D, sd):
        """Rows `idx` x features `feats` of a row-major operand; zero outside the matrix."""
        return tl.load(ptr + idx[:, None] * stride + feats[None, :] * sd, mask=ok[:, None] & (feats < D)[None, :],
                       other=0.0)

    @triton.jit
    def _dot_all_features(q_ptr, k_ptr, rows, cols, M, P, D, sqm, sqd, skm, skd, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
        """q[rows] k[cols]^T in fp32 over all D features in BLOCK_D chunks: the path for D > BLOCK_D."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            feats = d0 + tl.arange(0, BLOCK_D)
            acc = tl.dot(_tile(q_ptr, rows, rows < M, sqm, feats, D, sqd),
                         tl.trans(_tile(k_ptr, cols, cols < P, skm, feats, D, skd)), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _qk(q, k, q_ptr, k_ptr, rows, cols, M, P, D, sqm, sqd, skm, skd, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """q[rows] k[cols]^T in fp32: from the tiles at hand when the row is ONE_CHUNK, else over D in chunks
        (q and k are then unused placeholders)."""
        if ONE_CHUNK:
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        else:
            qk = _dot_all_features(q_ptr, k_ptr, rows, cols, M, P, D, sqm, sqd, skm, skd, BLOCK_M, BLOCK_N, BLOCK_D,
                                   PRECISION)
        return qk

    @triton.jit
    def _row_block_tile(q, k, q_ptr, k_ptr, bias_ptr, ids_ptr, row_key, rows, cols, M, P, D, sqm, sqd, skm, skd,
                        scale, row_offset, HAS_BIAS: tl.constexpr, SELF_MASK: tl.constexpr, TARGETS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                        PRECISION: tl.constexpr):
        """A row block's logits tile against columns `cols`, and which of its pairs are positives."""
        qk = _qk(q, k, q_ptr, k_ptr, rows, cols, M, P, D, sqm, sqd, skm, skd, BLOCK_M, BLOCK_N, BLOCK_D, ONE_CHUNK,
                 PRECISION)
        s = _logits(qk, _col_bias(bias_ptr, cols, P, HAS_BIAS), rows, cols, P, scale, row_offset, HAS_BIAS, SELF_MASK)
        pos = _positives(row_key, _col_keys(cols, P, ids_ptr, TARGETS), rows, cols, M, P, row_offset, TARGETS)
        return s, pos

    @triton.jit
    def _logits(qk, bias, rows, cols, P, scale, row_offset, HAS_BIAS: tl.constexpr, SELF_MASK: tl.constexpr):
        """The logits tile from q k^T in fp32; masked and out-of-range columns are -inf."""
        s = qk * scale
        if HAS_BIAS:
            s += bias[None, :]
        drop = (cols >= P)[None, :] & (rows >= 0)[:, None]
        if SELF_MASK:
            drop = drop | (cols[None, :] == rows[:, None] + row_offset)
        return tl.where(drop, float("-inf"), s)

    @triton.jit
    def _col_bias(bias_ptr, cols, P, HAS_BIAS: tl.constexpr):
        """The columns' bias in fp32 (a placeholder 0 without one: _logits then never reads it)."""
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=cols < P, other=0.0).to(tl.float32)
        return bias

    @triton.jit
    def _row_keys(rows, M, tgt_ptr, ids_ptr, row_offset, TARGETS: tl.constexpr):
        """What a row's positive columns match: its target column, or its own instance id."""
        if TARGETS:
            key = tl.load(tgt_ptr + rows, mask=rows < M, other=0)
        else:
            key = tl.load(ids_ptr + row_offset + rows, mask=rows < M, other=0)
        return key

    @triton.jit
    def _col_keys(cols, P, ids_ptr, TARGETS: tl.constexpr):
        """What a column offers the row keys: its index (targets), or its instance id."""
        if TARGETS:
            key = cols.to(tl.int64)
        else:
            key = tl.load(ids_ptr + cols, mask=cols < P, other=0)
        return key

    @triton.jit
    def _positives(row_key, col_key, rows, cols, M, P, row_offset, TARGETS: tl.constexpr):
        """Which (row, column) pairs are positives: the target column, or the row's other instances."""
        pos = col_key[None, :] == row_key[:, None]
        if not TARGETS:
            pos = pos & (cols[None, :] != rows[:, None] + row_offset)
        return pos & (rows < M)[:, None] & (cols < P)[None, :]

    @triton.autotune(configs=_configs(), key=["M", "P", "D"])
    @triton.jit
    def _forward_kernel(q_ptr, k_ptr, bias_ptr, tgt_ptr, ids_ptr, loss_ptr, lse_ptr, npos_ptr,
                        M, P, D, sqm, sqd, skm, skd, scale, row_offset,
                        HAS_BIAS: tl.constexpr, SELF_MASK: tl.constexpr, TARGETS: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """Per row: online max / sum-exp over all column tiles, plus the sum and count of positives.

        With ONE_CHUNK (D <= BLOCK_D) the row tile of q is loaded once and only k tiles stream through
        the loop, which is what Triton's pipeliner turns into asynchronous copies.
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        feats = tl.arange(0, BLOCK_D)
        q = 0.0
        if ONE_CHUNK:
            q = _tile(q_ptr, rows, row_ok, sqm, feats, D, sqd)
        row_key = _row_keys(rows, M, tgt_ptr, ids_ptr, row_offset, TARGETS)
        row_max = tl.full((BLOCK_M,), -3.0e38, tl.float32)  # finite: exp(-inf - row_max) stays 0, not NaN
        sum_exp = tl.zeros((BLOCK_M,), tl.float32)
        pos_sum = tl.zeros((BLOCK_M,), tl.float32)
        n_pos = tl.zeros((BLOCK_M,), tl.float32)
        for n0 in range(0, P, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            k = 0.0
            if ONE_CHUNK:
                k = _tile(k_ptr, cols, cols < P, skm, feats, D, skd)
            s, pos = _row_block_tile(q, k, q_ptr, k_ptr, bias_ptr, ids_ptr, row_key, rows, cols, M, P, D, sqm, sqd,
                                     skm, skd, scale, row_offset, HAS_BIAS, SELF_MASK, TARGETS, BLOCK_M, BLOCK_N,
                                     BLOCK_D, ONE_CHUNK, PRECISION)
            # One reduction for both keeps them in one layout: apart, Triton holds the mask twice.
            pairs = tl.join(tl.where(pos, s, 0.0), tl.where(pos, 1.0, 0.0))
            tile_pos_sum, tile_n_pos = tl.split(tl.sum(pairs, axis=1))
            pos_sum += tile_pos_sum
            n_pos += tile_n_pos
            new_max = tl.maximum(row_max, tl.max(s, axis=1))
            sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
            row_max = new_max
        lse = row_max + tl.log(sum_exp)
        tl.store(lse_ptr + rows, lse, mask=row_ok)
        tl.store(npos_ptr + rows, n_pos, mask=row_ok)
        # A row without a positive gets 0/0 = NaN, never a guess; padding rows divide by 1.
        tl.store(loss_ptr + rows, lse - pos_sum / tl.where(row_ok, n_pos, 1.0), mask=row_ok)

    @triton.jit
    def _dlogits_tile(s, pos, lse, inv_npos, row_ok):
        """d loss_i / d logit_ij = softmax_ij - [j positive] / n_pos_i (per unit of the row's gradient)."""
        d = tl.exp(s - lse[:, None]) - tl.where(pos, inv_npos[:, None], 0.0)
        return tl.where(row_ok[:, None], d, 0.0)

    @triton.autotune(configs=_configs(), key=["M", "P", "D"])
    @triton.jit
    def _grad_rows_kernel(q_ptr, k_ptr, bias_ptr, tgt_ptr, ids_ptr, lse_ptr, npos_ptr, g_ptr, dq_ptr,
                          M, P, D, sqm, sqd, skm, skd, sdm, sdd, scale, row_offset,
                          HAS_BIAS: tl.constexpr, SELF_MASK: tl.constexpr, TARGETS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """dq[rows, d-block] = scale * g_row * sum over column tiles of dlogits @ k.

        With ONE_CHUNK the q tile stays put and each k tile serves both the logits and the dq product.
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        douts = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        row_ok = rows < M
        q = 0.0
        if ONE_CHUNK:
            q = _tile(q_ptr, rows, row_ok, sqm, douts, D, sqd)
        row_key = _row_keys(rows, M, tgt_ptr, ids_ptr, row_offset, TARGETS)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        inv_npos = 1.0 / tl.load(npos_ptr + rows, mask=row_ok, other=1.0)
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, P, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            k = _tile(k_ptr, cols, cols < P, skm, douts, D, skd)
            s, pos = _row_block_tile(q, k, q_ptr, k_ptr, bias_ptr, ids_ptr, row_key, rows, cols, M, P, D, sqm, sqd,
                                     skm, skd, scale, row_offset, HAS_BIAS, SELF_MASK, TARGETS, BLOCK_M, BLOCK_N,
                                     BLOCK_D, ONE_CHUNK, PRECISION)
            d = _dlogits_tile(s, pos, lse, inv_npos, row_ok)
            # d is in [-1, 1]: casting it to the operand dtype cannot underflow the way d * g would.
            acc = tl.dot(d.to(k.dtype), k, acc, input_precision=PRECISION)
        dq = acc * (scale * g)[:, None]
        tl.store(dq_ptr + rows[:, None] * sdm + douts[None, :] * sdd, dq.to(dq_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (douts < D)[None, :])

    @triton.autotune(configs=_configs(), key=["M", "P", "D"])
    @triton.jit
    def _grad_cols_kernel(q_ptr, k_ptr, bias_ptr, tgt_ptr, ids_ptr, lse_ptr, npos_ptr, g_ptr, gmax_ptr,
                          dk_ptr, dbias_ptr, M, P, D, sqm, sqd, skm, skd, sdm, sdd, scale, row_offset,
                          HAS_BIAS: tl.constexpr, SELF_MASK: tl.constexpr, TARGETS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """dk[cols, d-block] = scale * sum over row tiles of (g * dlogits)^T @ q; dbias = column sums.

        Row gradients are divided by their maximum before the low-precision cast (and multiplied back
        after), so a mean over 65k rows does not flush fp16 products to zero. With ONE_CHUNK the k tile
        stays put and each q tile serves both the logits and the dk product.
        """
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        douts = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < P
        k = 0.0
        if ONE_CHUNK:
            k = _tile(k_ptr, cols, col_ok, skm, douts, D, skd)
        bias = _col_bias(bias_ptr, cols, P, HAS_BIAS)
        col_key = _col_keys(cols, P, ids_ptr, TARGETS)
        gmax = tl.load(gmax_ptr)
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        dbias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_ok = rows < M
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
            inv_npos = 1.0 / tl.load(npos_ptr + rows, mask=row_ok, other=1.0)
            g = tl.load(g_ptr + rows, mask=row_ok, other=0.0) / gmax
            q = _tile(q_ptr, rows, row_ok, sqm, douts, D, sqd)
            qk = _qk(q, k, q_ptr, k_ptr, rows, cols, M, P, D, sqm, sqd, skm, skd, BLOCK_M, BLOCK_N, BLOCK_D, ONE_CHUNK,
                     PRECISION)
            s = _logits(qk, bias, rows, cols, P, scale, row_offset, HAS_BIAS, SELF_MASK)
            pos = _positives(_row_keys(rows, M, tgt_ptr, ids_ptr, row_offset, TARGETS), col_key, rows, cols, M, P,
                             row_offset, TARGETS)
            d = _dlogits_tile(s, pos, lse, inv_npos, row_ok) * g[:, None]
            dbias += tl.sum(d, axis=0)
            acc = tl.dot(tl.trans(d.to(q.dtype)), q, acc, input_precision=PRECISION)
        dk = acc * (scale * gmax)
        tl.store(dk_ptr + cols[:, None] * sdm + douts[None, :] * sdd, dk.to(dk_ptr.dtype.element_ty),
                 mask=col_ok[:, None] & (douts < D)[None, :])
        if HAS_BIAS:
            tl.store(dbias_ptr + cols, dbias * gmax, mask=col_ok & (tl.program_id(1) == 0))


def _chunks(d: int, dtype: torch.dtype, precision: str) -> dict:
    """How the kernels walk the D features: BLOCK_D at a time, in ONE_CHUNK when the row fits.

    A row of up to 128 features is one chunk; longer rows go in chunks of 128 (fp16, bf16) or 64
    (fp32: double-buffered 128-wide fp32 tiles would not fit in shared memory). ieee fp32 dots run
    on the FMA units, which hold both operand chunks in registers, so on a GPU they take 16 features
    at a time; their backward then recomputes the logits per 16-feature output chunk (ieee is the
    exact path, not the fast one). The interpreter has no registers to run out of but pays for every
    loop trip, so it keeps the wide chunks.
    """
    if precision == "ieee" and not INTERPRET:
        block = 16
    elif d <= 128:
        block = max(triton.next_power_of_2(d), 16)
    else:
        block = 64 if dtype == torch.float32 else 128
    return {"BLOCK_D": block, "ONE_CHUNK": d <= block}


def _inputs(q, k, col_bias, targets, instance_ids) -> tuple:
    """The kernels' five input pointers; an absent optional input passes q, which its flag never reads."""
    return (q, k, *(q if t is None else t for t in (col_bias, targets, instance_ids)))


def _flags(col_bias, targets, self_mask, dtype, d) -> dict:
    """The kernels' constexprs: one compiled variant per combination."""
    precision = dot_precision(dtype)
    return {"HAS_BIAS": col_bias is not None, "SELF_MASK": bool(self_mask), "TARGETS": targets is not None,
            "PRECISION": precision, **_chunks(d, dtype, precision)}


class _SimXentFunction(torch.autograd.Function):
    """Per-row losses from the fused kernel; reduction happens outside, so autograd hands us d loss / d row."""

    @staticmethod
    def forward(ctx, q, k, col_bias, targets, instance_ids, scale, self_mask, row_offset):
        m, d = q.shape
        p = k.shape[0]
        loss, lse, n_pos = (torch.empty(m, dtype=torch.float32, device=q.device) for _ in range(3))
        flags = _flags(col_bias, targets, self_mask, q.dtype, d)
        _forward_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)](
            *_inputs(q, k, col_bias, targets, instance_ids), loss, lse, n_pos, m, p, d, q.stride(0), q.stride(1),
            k.stride(0), k.stride(1), float(scale), int(row_offset), **flags)
        ctx.save_for_backward(q, k, col_bias, targets, instance_ids, lse, n_pos)
        ctx.scale, ctx.self_mask, ctx.row_offset = float(scale), bool(self_mask), int(row_offset)
        ctx.mark_non_differentiable(n_pos)
        return loss, n_pos

    @staticmethod
    def backward(ctx, grad_rows, _grad_npos):
        q, k, col_bias, targets, instance_ids, lse, n_pos = ctx.saved_tensors
        m, d = q.shape
        p = k.shape[0]
        g = grad_rows.float().contiguous()
        flags = _flags(col_bias, targets, ctx.self_mask, q.dtype, d)
        common = (*_inputs(q, k, col_bias, targets, instance_ids), lse, n_pos, g)
        shape = (m, p, d, q.stride(0), q.stride(1), k.stride(0), k.stride(1))
        block_d = flags["BLOCK_D"]
        dq = dk = dbias = None
        if ctx.needs_input_grad[0]:
            dq = torch.empty_like(q, memory_format=torch.contiguous_format)
            _grad_rows_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(d, block_d))](
                *common, dq, *shape, dq.stride(0), dq.stride(1), ctx.scale, ctx.row_offset, **flags)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dk = torch.empty_like(k, memory_format=torch.contiguous_format)
            dbias = torch.empty(p, dtype=torch.float32, device=k.device) if col_bias is not None else None
            gmax = g.abs().amax().clamp_min(1e-30).reshape(1)
            _grad_cols_kernel[lambda meta: (triton.cdiv(p, meta["BLOCK_N"]), triton.cdiv(d, block_d))](
                *common, gmax, dk, k if dbias is None else dbias, *shape, dk.stride(0), dk.stride(1), ctx.scale,
                ctx.row_offset, **flags)
        return (dq, dk if ctx.needs_input_grad[1] else None, dbias if ctx.needs_input_grad[2] else None,
                None, None, None, None, None)


def _validate(q, k, scale, col_bias, targets, instance_ids, self_mask, row_offset, reduction) -> None:
    """Shape and argument rules, checked on every path without reading device memory."""
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"sim_xent: q {tuple(q.shape)} and k {tuple(k.shape)} must be (M, D) and (P, D)")
    if not (q.is_floating_point() and k.is_floating_point()):
        raise ValueError(f"sim_xent: q and k must be floating point (got {q.dtype}, {k.dtype})")
    m, p = q.shape[0], k.shape[0]
    if (targets is None) == (instance_ids is None):
        raise ValueError("sim_xent: give exactly one of targets or instance_ids")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"sim_xent: scale={scale!r}: must be a finite Python number (fold a learnable scale "
                         "into q or k)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"sim_xent: reduction={reduction!r}: must be one of {', '.join(REDUCTIONS)}")
    if targets is not None and (targets.shape != (m,) or targets.is_floating_point()):
        raise ValueError(f"sim_xent: targets {tuple(targets.shape)} {targets.dtype}: must be integer, shape ({m},)")
    if instance_ids is not None and (instance_ids.shape != (p,) or instance_ids.is_floating_point()):
        raise ValueError(f"sim_xent: instance_ids {tuple(instance_ids.shape)} {instance_ids.dtype}: must be "
                         f"integer, one per column ({p},)")
    if col_bias is not None and col_bias.shape != (p,):
        raise ValueError(f"sim_xent: col_bias {tuple(col_bias.shape)}: must have one value per column ({p},)")
    if (self_mask or instance_ids is not None) and not 0 <= row_offset <= p - m:
        raise ValueError(f"sim_xent: row_offset={row_offset}: rows are columns row_offset..row_offset+M-1, "
                         f"so it must lie in [0, P - M] = [0, {p - m}]")


def _check_on_host(targets, n_pos, p) -> None:
    """Off the GPU a bad label is worth a clear error; on the GPU it shows as a NaN loss (no host sync)."""
    if targets is not None and targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < p):
        raise ValueError(f"sim_xent: targets must lie in [0, {p}) (got {int(targets.min())}..{int(targets.max())})")
    if targets is None and bool((n_pos == 0).any()):
        raise ValueError("sim_xent: a row has no positive column (each instance needs >= 2 views)")


def sim_xent(q: torch.Tensor, k: torch.Tensor, *, scale: float, col_bias: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, instance_ids: torch.Tensor | None = None,
             self_mask: bool = False, row_offset: int = 0, reduction: str = "mean",
             impl: str = "auto") -> torch.Tensor:
    """Mean (sum, or per-row with "none") of -log softmax over `scale * q k^T + col_bias`.

    Semantics are those of reference.sim_xent_reference; `impl` is auto | triton | reference.
    The loss is float32 for half inputs; gradients flow to q, k (summed when k is q) and col_bias.
    """
    _validate(q, k, scale, col_bias, targets, instance_ids, self_mask, row_offset, reduction)
    wide = torch.float64 in (q.dtype, k.dtype)
    if wide and impl == "triton":
        raise ValueError("sim_xent: impl='triton' takes fp32, fp16 or bf16; float64 runs on the reference")
    if wide or not use_triton("sim_xent", q, impl):
        return sim_xent_reference(q, k, scale=scale, col_bias=col_bias, targets=targets,
                                  instance_ids=instance_ids, self_mask=self_mask, row_offset=row_offset,
                                  reduction=reduction)
    dtype = kernel_dtype(torch.promote_types(q.dtype, k.dtype))
    targets = None if targets is None else targets.to(torch.int64).contiguous()
    instance_ids = None if instance_ids is None else instance_ids.to(torch.int64).contiguous()
    if col_bias is not None:
        col_bias = col_bias.float().contiguous()
    per_row, n_pos = _SimXentFunction.apply(q.to(dtype), k.to(dtype), col_bias, targets, instance_ids,
                                            scale, self_mask, row_offset)
    if not q.is_cuda:
        _check_on_host(targets, n_pos, k.shape[0])
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows in float32 (float64 kept), so a head's loss runs at full precision under autocast."""
    return torch.nn.functional.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)


def narrow(x: torch.Tensor, operand_dtype: torch.dtype) -> torch.Tensor:
    """x as the kernel's operands: fp32 rows cast to `operand_dtype` (bf16: exact products, fp32 sums);
    float64 stays float64, the ground truth the tests compare against."""
    return x if x.dtype == torch.float64 else x.to(operand_dtype)


def nt_xent(z, n_views: int, temperature: float, impl: str = "auto", instance_ids: torch.Tensor | None = None,
            operand_dtype: torch.dtype = torch.float32):
    """SimCLR's NT-Xent for any number of views >= 2; z is (V*B, D), view-major (row r is image r mod B).

    `instance_ids` (V*B,) overrides which rows are views of one image (query mixing relabels rows);
    the unit rows reach the kernel as `operand_dtype`.
    """
    if n_views < 2 or z.shape[0] % n_views:
        raise ValueError(f"nt_xent: {z.shape[0]} rows with n_views={n_views}: need n_views >= 2 "
                         "dividing the row count")
    z = narrow(unit_rows(z), operand_dtype)
    if instance_ids is None:
        instance_ids = torch.arange(z.shape[0] // n_views, device=z.device).repeat(n_views)
    return sim_xent(z, z, scale=1.0 / temperature, instance_ids=instance_ids, self_mask=True, impl=impl)
