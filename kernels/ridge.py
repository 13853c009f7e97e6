"""Batched ridge regression (R2D2's head): W = x^T (x x^T + lam I)^-1 y = (x^T x + lam I)^-1 x^T y per task.

Both forms are one symmetric positive definite system `A sol = rhs` with A = Z Z^T + lam I, written
with Z = x^T (primal: D x D system, rhs = x^T y, W = sol) or Z = x (dual: n x n system, rhs = y,
W = x^T sol). The kernel takes Z as a strided view, so one code path serves both forms.

On chip (system size m = min(n, D) <= MAX_ON_CHIP): one Triton program per task computes the Gram
matrix, its Cholesky factor L, and the forward and back substitutions, all in fp32 registers
(half inputs are read as they are and widened in the kernel). The limit is the register budget: the
program holds the padded s x s fp32 system (s = m rounded up to a power of two, at least 16 for
tl.dot), its factor and the column extractions' temporaries. Compiled for sm_90 (ptxas, CI test
tests/kernels/test_compile_for_gpu.py), s = 64 at 4 warps reaches the 255-register cap and spills
in fp32, so s = 64 runs 8 warps (no spills); s = 128 would need four times the registers. The
Cholesky loop is also sequential in s, so beyond that size one program per task is slow next to
cuSOLVER's batched factorisation. Larger systems therefore go to torch.linalg.cholesky_ex and
torch.cholesky_solve (cuSOLVER on a GPU), which report failure in `info` instead of synchronising.

Backward (the adjoint solve): with d_rhs = A^-1 d_sol, solved with the factor L saved by the
forward (no second factorisation), dA = -d_rhs sol^T, d lam = trace(dA) and dZ = (dA + dA^T) Z.
This first version runs the backward in torch ops (batched matmuls and torch.cholesky_solve).

Dispatch (kernels/runtime.py): CUDA tensors -> Triton, CPU tensors -> the reference in
kernels/reference.py, TRITON_INTERPRET=1 -> Triton on the CPU. float64 always takes the reference.
"""
from __future__ import annotations

import torch

from .reference import ridge_is_dual, ridge_reference
from .runtime import HAVE_TRITON, dot_precision, kernel_dtype, use_triton

MAX_ON_CHIP = 64


def tile_size(m: int) -> int:
    """S, the padded system size of the on-chip kernel: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (m - 1).bit_length())


def warps_for(s: int) -> int:
    """8 warps from S = 64: at 4, fp32 tiles of that size spill registers (sm_90 compile check)."""
    return 8 if s >= 64 else 4

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _load_z(z_base, rows, ks, M, K, szm, szk):
        """An (S x BLOCK_K) slice of Z in fp32; rows past M and columns past K read as zero."""
        mask = (rows < M)[:, None] & (ks < K)[None, :]
        return tl.load(z_base + rows[:, None] * szm + ks[None, :] * szk, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _column(mat, cols, j):
        """Column j of a register tile (a masked row sum: registers cannot be indexed)."""
        return tl.sum(tl.where(cols[None, :] == j, mat, 0.0), axis=1)

    @triton.jit
    def _cholesky(a, lam, rows, cols, S: tl.constexpr):
        """Lower factor L of the (S x S) tile a, right-looking, one column per step.

        Every pivot of Z Z^T + lam I is >= lam in exact arithmetic (its Schur complements are), so a
        pivot that rounding pushed below lam is raised to lam: ill-conditioned tasks stay finite.
        """
        low = tl.zeros((S, S), tl.float32)
        for j in range(0, S):
            col = _column(a, cols, j)
            pivot = tl.sqrt(tl.maximum(tl.sum(tl.where(rows == j, col, 0.0), axis=0), lam))
            lcol = tl.where(rows >= j, col / pivot, 0.0)
            a -= lcol[:, None] * lcol[None, :]
            low = tl.where(cols[None, :] == j, lcol[:, None], low)
        return low

    @triton.jit
    def _triangular_solve(tri, b, rows, cols, S: tl.constexpr, UPPER: tl.constexpr):
        """tri^-1 b by substitution, one unknown row per step (upward when UPPER, downward otherwise)."""
        for step in range(0, S):
            j = S - 1 - step if UPPER else step
            col = _column(tri, cols, j)
            pivot = tl.sum(tl.where(rows == j, col, 0.0), axis=0)
            xj = tl.sum(tl.where(rows[:, None] == j, b, 0.0), axis=0) / pivot
            pending = (rows < j) if UPPER else (rows > j)
            b = tl.where(rows[:, None] == j, xj[None, :], b - tl.where(pending, col, 0.0)[:, None] * xj[None, :])
        return b

    @triton.jit
    def _ridge_kernel(z_ptr, y_ptr, lam_ptr, l_ptr, sol_ptr, w_ptr, M, K, C,
                      szt, szm, szk, syt, syr, syc,
                      DUAL: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                      PRECISION: tl.constexpr):
        """One task: A = Z Z^T + lam I, L = chol(A), sol = A^-1 rhs per column block, W from sol.

        Z is (M x K); y's rows run over K (primal, rhs = Z y) or over M (dual, rhs = y).
        Padding rows (M..S) get A = lam on the diagonal and a zero rhs, so they solve to zero.
        """
        t = tl.program_id(0)
        rows = tl.arange(0, S)
        cols = tl.arange(0, S)
        z_base = z_ptr + t * szt
        y_base = y_ptr + t * syt
        a = tl.zeros((S, S), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            zc = _load_z(z_base, rows, k0 + tl.arange(0, BLOCK_K), M, K, szm, szk)
            a = tl.dot(zc, tl.trans(zc), a, input_precision=PRECISION)
        lam = tl.load(lam_ptr + t)
        a += tl.where(rows[:, None] == cols[None, :], lam, 0.0)
        low = _cholesky(a, lam, rows, cols, S)
        square = (rows < M)[:, None] & (cols < M)[None, :]
        tl.store(l_ptr + t * M * M + rows[:, None] * M + cols[None, :], low, mask=square)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            if DUAL:
                rhs = tl.load(y_base + rows[:, None] * syr + cs[None, :] * syc,
                              mask=(rows < M)[:, None] & (cs < C)[None, :], other=0.0).to(tl.float32)
            else:
                rhs = tl.zeros((S, BLOCK_C), tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    yc = tl.load(y_base + ks[:, None] * syr + cs[None, :] * syc,
                                 mask=(ks < K)[:, None] & (cs < C)[None, :], other=0.0).to(tl.float32)
                    rhs = tl.dot(_load_z(z_base, rows, ks, M, K, szm, szk), yc, rhs, input_precision=PRECISION)
            sol = _triangular_solve(low, rhs, rows, cols, S, False)
            sol = _triangular_solve(tl.trans(low), sol, rows, cols, S, True)
            tl.store(sol_ptr + t * M * C + rows[:, None] * C + cs[None, :], sol,
                     mask=(rows < M)[:, None] & (cs < C)[None, :])
            if DUAL:  # W = Z^T sol, one (BLOCK_K x BLOCK_C) block at a time
                for k0 in range(0, K, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    wc = tl.dot(tl.trans(_load_z(z_base, rows, ks, M, K, szm, szk)), sol, input_precision=PRECISION)
                    tl.store(w_ptr + t * K * C + ks[:, None] * C + cs[None, :], wc,
                             mask=(ks < K)[:, None] & (cs < C)[None, :])


def _solve_on_chip(z, y, lam, dual):
    """Factor and solve every task in one launch; returns (L, sol, W), all fp32."""
    t, m, k = z.shape
    c = y.shape[2]
    low = torch.empty(t, m, m, dtype=torch.float32, device=z.device)
    sol = torch.empty(t, m, c, dtype=torch.float32, device=z.device)
    w = torch.empty(t, k, c, dtype=torch.float32, device=z.device) if dual else sol
    s = tile_size(m)
    _ridge_kernel[(t,)](z, y, lam, low, sol, w, m, k, c, *z.stride(), *y.stride(), DUAL=dual, S=s, BLOCK_K=32,
                        BLOCK_C=min(tile_size(c), 32),
                        PRECISION=dot_precision(torch.promote_types(z.dtype, y.dtype)), num_warps=warps_for(s))
    return low, sol, w


def _solve_with_torch(z, y, lam, dual):
    """The same (L, sol, W) through cuSOLVER for systems too big for one program; no host sync.

    cuSOLVER cannot floor pivots as the kernel does: where rounding of the fp32 Gram matrix outweighs
    lam (a rank-deficient support whose norm is large next to lam), the factorisation fails, and the
    partial factor would give finite garbage. A failed task's W is NaN instead (on the GPU: loud, and
    no sync); off the GPU it is a clear error.
    """
    z, y = z.float(), y.float()
    a = z @ z.mT
    a.diagonal(dim1=-2, dim2=-1).add_(lam[:, None])
    low, info = torch.linalg.cholesky_ex(a)
    if not z.is_cuda and bool((info > 0).any()):
        raise ValueError(f"ridge: x x^T + lam I is not positive definite in fp32 for task(s) "
                         f"{(info > 0).nonzero().flatten().tolist()}: lam is below the Gram matrix's rounding "
                         "error; use a larger lam or float64 inputs")
    low = torch.where(info[:, None, None] > 0, float("nan"), low)
    sol = torch.cholesky_solve(y if dual else z @ y, low)
    return low, sol, (z.mT @ sol if dual else sol)


class _RidgeFunction(torch.autograd.Function):
    """W from (x, y, lam); saves the factor L and the solution so the backward is two triangular solves."""

    @staticmethod
    def forward(ctx, x, y, lam, dual):
        z = x if dual else x.mT
        solve = _solve_on_chip if min(x.shape[1], x.shape[2]) <= MAX_ON_CHIP else _solve_with_torch
        low, sol, w = solve(z, y, lam, dual)
        ctx.save_for_backward(x, y, low, sol)
        ctx.dual = dual
        return w

    @staticmethod
    def backward(ctx, grad_w):
        x, y, low, sol = ctx.saved_tensors
        xf, grad_w = x.float(), grad_w.float()
        z = xf if ctx.dual else xf.mT
        d_rhs = torch.cholesky_solve(xf @ grad_w if ctx.dual else grad_w, low)   # A^-1 d_sol
        dz = -(d_rhs @ sol.mT + sol @ d_rhs.mT) @ z                                # (dA + dA^T) Z
        if ctx.dual:
            dx, dy = dz + sol @ grad_w.mT, d_rhs
        else:
            dx, dy = dz.mT + y.float() @ d_rhs.mT, xf @ d_rhs
        dlam = -(d_rhs * sol).sum(dim=(1, 2)) if ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dy.to(y.dtype), dlam, None


def _validate(x, y, lam, form) -> None:
    """Shape and argument rules, checked on every path without reading device memory."""
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"ridge: x {tuple(x.shape)} and y {tuple(y.shape)} must be (T, n, D) and (T, n, C)")
    if min(x.shape) < 1 or y.shape[2] < 1:
        raise ValueError(f"ridge: x {tuple(x.shape)} and y {tuple(y.shape)}: every dimension must be >= 1")
    if not (x.is_floating_point() and y.is_floating_point()):
        raise ValueError(f"ridge: x and y must be floating point (got {x.dtype}, {y.dtype})")
    if not isinstance(lam, torch.Tensor):
        if not lam > 0:
            raise ValueError(f"ridge: lam={lam!r}: must be > 0 (it makes x x^T + lam I positive definite)")
        return
    if lam.shape not in ((), (x.shape[0],)) or not lam.is_floating_point():
        raise ValueError(f"ridge: lam {tuple(lam.shape)} {lam.dtype}: must be a floating 0-d tensor or one "
                         f"value per task ({x.shape[0]},)")
    # Off the GPU a clear error; on the GPU a non-positive lam shows as NaN (no host sync).
    if not lam.is_cuda and not bool((lam > 0).all()):
        raise ValueError("ridge: lam must be > 0 (it makes x x^T + lam I positive definite)")


def ridge_solve(x: torch.Tensor, y: torch.Tensor, lam, *, form: str = "auto", impl: str = "auto") -> torch.Tensor:
    """Ridge weights W (T, D, C) of every task; semantics of reference.ridge_reference.

    x (T, n, D) support embeddings, y (T, n, C) targets, lam > 0 a number, a 0-d tensor or (T,).
    `form` picks the system (auto: the smaller, min(n, D)); `impl` is auto | triton | reference.
    W is float32 for half and float32 inputs; gradients flow to x, y and a lam tensor.
    """
    _validate(x, y, lam, form)
    wide = torch.float64 in (x.dtype, y.dtype)
    if wide and impl == "triton":
        raise ValueError("ridge: impl='triton' takes fp32, fp16 or bf16; float64 runs on the reference")
    if wide or not use_triton("ridge", x, impl):
        return ridge_reference(x, y, lam, form=form)
    dual = ridge_is_dual(x, form)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=x.device).expand(x.shape[0]).contiguous()
    return _RidgeFunction.apply(x.to(kernel_dtype(x.dtype)), y.to(kernel_dtype(y.dtype)), lam, dual)
