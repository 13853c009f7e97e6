"""Batched ridge regression (R2D2's head): W = x^T (x x^T + lam I)^-1 y = (x^T x + lam I)^-1 x^T y per task.

Both forms are one symmetric positive definite system `A sol = rhs` with A = Z Z^T + lam I, written
with Z = x^T (primal: D x D system, rhs = x^T y, W = sol) or Z = x (dual: n x n system, rhs = y,
W = x^T sol). The kernel takes Z as a strided view, so one code path serves both forms.

On chip (system size m = min(n, D) <= MAX_ON_CHIP): one Triton program per task and block of up to 32
target columns computes the Gram matrix, its Cholesky factor L, and the forward and back
substitutions for its columns, all in fp32 registers
(half inputs are read as they are and widened in the kernel). The limit is the register budget: the
program holds the padded s x s fp32 system (s = m rounded up to a power of two, at least 16 for
tl.dot), its factor and the column extractions' temporaries. Compiled for sm_90 (ptxas, CI test
tests/kernels/test_compile_for_gpu.py), s = 64 at 4 warps reaches the 255-register cap and spills
in fp32, so s = 64 runs 8 warps (no spills; see tiles()); s = 128 would need four times the registers. The
Cholesky loop is also sequential in s, so beyond that size one program per task is slow next to
cuSOLVER's batched factorisation. Larger systems therefore go to torch.linalg.cholesky_ex and
torch.cholesky_solve (cuSOLVER on a GPU), which report failure in `info` instead of synchronising.

Backward (the adjoint solve): with d_rhs = A^-1 d_sol, solved with the factor L saved by the
forward (no second factorisation), dA = -d_rhs sol^T, d lam = trace(dA) and dZ = (dA + dA^T) Z.
On chip it is two launches: the adjoint solves per (task, column block) with the saved factor, then
dZ per (task, block of Z's columns), summing over sol's column blocks so that no (s x s) matrix but
the factor is ever held; for the large systems it is batched torch ops around torch.cholesky_solve.
dy is computed only when y requires a gradient.

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


def tiles(kernel: str, m: int, c: int) -> dict:
    """Tile sizes and warps of an on-chip kernel ("solve": forward and adjoint; "grad_z": dZ) for an
    m x m system with c target columns. Chosen so that no fp32 variant spills registers on sm_90 at
    S = 64 (tests/kernels/test_compile_for_gpu.py reads the spills from the compiled cubins): the
    solves hold the S x S factor, so S = 64 runs 8 warps; dZ holds three dot results of S x BLOCK_K,
    so it takes smaller blocks and always 8 warps."""
    s = tile_size(m)
    if kernel == "solve":
        return {"S": s, "BLOCK_K": 32, "BLOCK_C": min(tile_size(c), 32), "num_warps": 8 if s >= 64 else 4}
    return {"S": s, "BLOCK_K": 16, "BLOCK_C": min(tile_size(c), 16 if s >= 64 else 32), "num_warps": 8}

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
    def _factor(z_base, lam, rows, cols, M, K, szm, szk, S: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
        """L = chol(Z Z^T + lam I); padding rows (M..S) get A = lam on the diagonal and solve to zero."""
        a = tl.zeros((S, S), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            zc = _load_z(z_base, rows, k0 + tl.arange(0, BLOCK_K), M, K, szm, szk)
            a = tl.dot(zc, tl.trans(zc), a, input_precision=PRECISION)
        a += tl.where(rows[:, None] == cols[None, :], lam, 0.0)
        return _cholesky(a, lam, rows, cols, S)

    @triton.jit
    def _cholesky_solve(low, b, rows, cols, S: tl.constexpr):
        """(L L^T)^-1 b: the forward then the back substitution."""
        b = _triangular_solve(low, b, rows, cols, S, False)
        return _triangular_solve(tl.trans(low), b, rows, cols, S, True)

    @triton.jit
    def _ridge_kernel(z_ptr, y_ptr, lam_ptr, l_ptr, sol_ptr, w_ptr, M, K, C,
                      szt, szm, szk, syt, syr, syc,
                      DUAL: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                      PRECISION: tl.constexpr):
        """Task t, columns block cb: A = Z Z^T + lam I, L = chol(A), sol = A^-1 rhs, then W from sol.

        Z is (M x K); y's rows run over K (primal, rhs = Z y) or over M (dual, rhs = y). Every column
        block factors A itself: a few steps of redundant work per program buy parallelism over the
        columns, which a single task with many classes (SSL: one task, B classes) needs.
        """
        t, cb = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, S)
        cols = tl.arange(0, S)
        z_base = z_ptr + t * szt
        y_base = y_ptr + t * syt
        low = _factor(z_base, tl.load(lam_ptr + t), rows, cols, M, K, szm, szk, S, BLOCK_K, PRECISION)
        tl.store(l_ptr + t * M * M + rows[:, None] * M + cols[None, :], low,
                 mask=(rows < M)[:, None] & (cols < M)[None, :] & (cb == 0))
        cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
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
        sol = _cholesky_solve(low, rhs, rows, cols, S)
        tl.store(sol_ptr + t * M * C + rows[:, None] * C + cs[None, :], sol,
                 mask=(rows < M)[:, None] & (cs < C)[None, :])
        if DUAL:  # W = Z^T sol, one (BLOCK_K x BLOCK_C) block at a time
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                wc = tl.dot(tl.trans(_load_z(z_base, rows, ks, M, K, szm, szk)), sol, input_precision=PRECISION)
                tl.store(w_ptr + t * K * C + ks[:, None] * C + cs[None, :], wc,
                         mask=(ks < K)[:, None] & (cs < C)[None, :])

    @triton.jit
    def _ridge_adjoint_kernel(z_ptr, gw_ptr, l_ptr, sol_ptr, drhs_ptr, dlam_ptr, M, K, C,
                              szt, szm, szk, sgt, sgr, sgc,
                              DUAL: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                              PRECISION: tl.constexpr):
        """Task t, column block cb of the adjoint solve: d_rhs = A^-1 d_sol with the forward's factor
        (d_sol = Z dW in the dual form, dW in the primal), and this block's share of d lam = -<d_rhs, sol>."""
        t, cb = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, S)
        cols = tl.arange(0, S)
        low = tl.load(l_ptr + t * M * M + rows[:, None] * M + cols[None, :],
                      mask=(rows < M)[:, None] & (cols < M)[None, :], other=0.0)
        low = tl.where((rows[:, None] == cols[None, :]) & (rows >= M)[:, None], 1.0, low)  # padding solves to 0
        cs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        block = (rows < M)[:, None] & (cs < C)[None, :]
        if DUAL:
            dsol = tl.zeros((S, BLOCK_C), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                gw = tl.load(gw_ptr + t * sgt + ks[:, None] * sgr + cs[None, :] * sgc,
                             mask=(ks < K)[:, None] & (cs < C)[None, :], other=0.0)
                dsol = tl.dot(_load_z(z_ptr + t * szt, rows, ks, M, K, szm, szk), gw, dsol, input_precision=PRECISION)
        else:
            dsol = tl.load(gw_ptr + t * sgt + rows[:, None] * sgr + cs[None, :] * sgc, mask=block, other=0.0)
        drhs = _cholesky_solve(low, dsol, rows, cols, S)
        tl.store(drhs_ptr + t * M * C + rows[:, None] * C + cs[None, :], drhs, mask=block)
        sol = tl.load(sol_ptr + t * M * C + rows[:, None] * C + cs[None, :], mask=block, other=0.0)
        tl.store(dlam_ptr + t * tl.num_programs(1) + cb, -tl.sum(tl.sum(drhs * sol, axis=1), axis=0))

    @triton.jit
    def _ridge_grad_z_kernel(z_ptr, y_ptr, gw_ptr, sol_ptr, drhs_ptr, dz_ptr, dy_ptr, M, K, C,
                             szt, szm, szk, syt, syr, syc, sgt, sgr, sgc, sdt, sdm, sdk, sdyt, sdyr, sdyc,
                             DUAL: tl.constexpr, NEED_DY: tl.constexpr, S: tl.constexpr, BLOCK_K: tl.constexpr,
                             BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        """Task t, Z columns block kb: dZ = -(d_rhs sol^T + sol d_rhs^T) Z + (dual: sol dW^T; primal:
        d_rhs y^T), summed over the column blocks of sol without forming the (S x S) matrix; primal dy =
        Z^T d_rhs. fp32 operands that come from the solves multiply in IEEE fp32."""
        t, kb = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, S)
        ks = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        zc = _load_z(z_ptr + t * szt, rows, ks, M, K, szm, szk)
        dz = tl.zeros((S, BLOCK_K), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            block = (rows < M)[:, None] & (cs < C)[None, :]
            kc = (ks < K)[:, None] & (cs < C)[None, :]
            sol = tl.load(sol_ptr + t * M * C + rows[:, None] * C + cs[None, :], mask=block, other=0.0)
            drhs = tl.load(drhs_ptr + t * M * C + rows[:, None] * C + cs[None, :], mask=block, other=0.0)
            dz -= tl.dot(drhs, tl.dot(tl.trans(sol), zc, input_precision="ieee"), input_precision="ieee")
            dz -= tl.dot(sol, tl.dot(tl.trans(drhs), zc, input_precision="ieee"), input_precision="ieee")
            if DUAL:
                gw = tl.load(gw_ptr + t * sgt + ks[:, None] * sgr + cs[None, :] * sgc, mask=kc, other=0.0)
                dz = tl.dot(sol, tl.trans(gw), dz, input_precision="ieee")
            else:
                yc = tl.load(y_ptr + t * syt + ks[:, None] * syr + cs[None, :] * syc, mask=kc, other=0.0)
                dz = tl.dot(drhs, tl.trans(yc.to(tl.float32)), dz, input_precision="ieee")
                if NEED_DY:
                    tl.store(dy_ptr + t * sdyt + ks[:, None] * sdyr + cs[None, :] * sdyc,
                             tl.dot(tl.trans(zc), drhs, input_precision="ieee"), mask=kc)
        tl.store(dz_ptr + t * sdt + rows[:, None] * sdm + ks[None, :] * sdk, dz,
                 mask=(rows < M)[:, None] & (ks < K)[None, :])


def _launch_constants(kernel: str, z, y) -> dict:
    """tiles() for this system, and the dot precision of its operands."""
    return {**tiles(kernel, z.shape[1], y.shape[2]),
            "PRECISION": dot_precision(torch.promote_types(z.dtype, y.dtype))}


def _solve_on_chip(z, y, lam, dual):
    """Factor and solve every task in one launch; returns (L, sol, W), all fp32."""
    t, m, k = z.shape
    c = y.shape[2]
    low = torch.empty(t, m, m, dtype=torch.float32, device=z.device)
    sol = torch.empty(t, m, c, dtype=torch.float32, device=z.device)
    w = torch.empty(t, k, c, dtype=torch.float32, device=z.device) if dual else sol
    solve = _launch_constants("solve", z, y)
    _ridge_kernel[(t, triton.cdiv(c, solve["BLOCK_C"]))](z, y, lam, low, sol, w, m, k, c, *z.stride(), *y.stride(),
                                                          DUAL=dual, **solve)
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


def _grad_on_chip(x, y, grad_w, low, sol, dual, need_dy):
    """(dx, dy, dlam) of every task in two launches (adjoint solves, then dZ), from the forward's factor."""
    z = x if dual else x.mT
    t, m, k = z.shape
    c = y.shape[2]
    solve, grad_z = _launch_constants("solve", z, y), _launch_constants("grad_z", z, y)
    column_blocks = triton.cdiv(c, solve["BLOCK_C"])
    drhs = torch.empty(t, m, c, dtype=torch.float32, device=x.device)
    dlam = torch.empty(t, column_blocks, dtype=torch.float32, device=x.device)
    _ridge_adjoint_kernel[(t, column_blocks)](z, grad_w, low, sol, drhs, dlam, m, k, c, *z.stride(),
                                             *grad_w.stride(), DUAL=dual, **solve)
    dx = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    dz = dx if dual else dx.mT
    dy = drhs if dual or not need_dy else torch.empty(y.shape, dtype=torch.float32, device=x.device)
    _ridge_grad_z_kernel[(t, triton.cdiv(k, grad_z["BLOCK_K"]))](
        z, y, grad_w, sol, drhs, dz, dy, m, k, c, *z.stride(), *y.stride(), *grad_w.stride(), *dz.stride(),
        *dy.stride(), DUAL=dual, NEED_DY=need_dy, **grad_z)
    return dx, (dy if need_dy else None), dlam.sum(dim=1)


def _grad_with_torch(x, y, grad_w, low, sol, dual, need_dy):
    """The same adjoint in batched torch ops (cuSOLVER's triangular solves) for the large systems."""
    xf = x.float()
    z = xf if dual else xf.mT
    d_rhs = torch.cholesky_solve(xf @ grad_w if dual else grad_w, low)      # A^-1 d_sol
    dz = -(d_rhs @ sol.mT + sol @ d_rhs.mT) @ z                              # (dA + dA^T) Z
    if dual:
        return dz + sol @ grad_w.mT, d_rhs, -(d_rhs * sol).sum(dim=(1, 2))
    dy = xf @ d_rhs if need_dy else None
    return dz.mT + y.float() @ d_rhs.mT, dy, -(d_rhs * sol).sum(dim=(1, 2))


def _on_chip(x) -> bool:
    return min(x.shape[1], x.shape[2]) <= MAX_ON_CHIP


class _RidgeFunction(torch.autograd.Function):
    """W from (x, y, lam); saves the factor L and the solution so the backward is two triangular solves."""

    @staticmethod
    def forward(ctx, x, y, lam, dual):
        z = x if dual else x.mT
        low, sol, w = (_solve_on_chip if _on_chip(x) else _solve_with_torch)(z, y, lam, dual)
        ctx.save_for_backward(x, y, low, sol)
        ctx.dual = dual
        return w

    @staticmethod
    def backward(ctx, grad_w):
        x, y, low, sol = ctx.saved_tensors
        grad = _grad_on_chip if _on_chip(x) else _grad_with_torch
        dx, dy, dlam = grad(x, y, grad_w.float(), low, sol, ctx.dual, ctx.needs_input_grad[1])
        return dx.to(x.dtype), (None if dy is None else dy.to(y.dtype)), dlam, None


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
