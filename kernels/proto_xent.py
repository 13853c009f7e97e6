"""Prototype cross-entropy: the loss of DINO and SwAV, a teacher's softmax over K prototypes as the
target of every other view's student softmax (semantics: reference.proto_xent_reference).

The fused path never holds a (views x batch x K) tensor: logits exist one (images x prototypes) tile
at a time, as in sim_xent. With x_s the student rows of view s, y_t the teacher's, sigma_s = x_s w_s^T
/ tau_s, p_t = softmax((y_t w_t^T - center) / tau_t), P = sum_t p_t and n(s) = Vt - [s < Vt] pairs
per student view, the loss of an image is

    sum_s n(s) lse(sigma_s) - sum_k P_k sum_s sigma_sk + sum_t sum_k p_tk sigma_tk

(each target is P less its own crop's p), so a program that holds all views of a block of images
needs one teacher and one student logits tile per view and prototype tile, and no per-pair state.
Kernels: the teacher's per-row log-sum-exp in one pass; the student's online
log-sum-exp and the cross terms in a second; the backward recomputes tiles for the student gradient
(rows, FlashAttention's dQ) and the prototypes' gradient (columns, its dK), with the teacher's share
of the student gradient, G_t = p_t w_s, computed once per teacher view rather than once per student
view. Extra memory: O(V B + K) and the fp32 (Vt, B, D) G beside the inputs and their gradients.

The centre statistic, the teacher's mean logit per prototype, is the logit of the teacher's mean row
(logits are linear in the row): one (D x K) mat-vec in torch, exact and deterministic, where summing
tiles into it with float atomics would make DINO's centre, and so a resumed run, differ in its last bits.

Dispatch (kernels/runtime.py): CUDA tensors -> Triton, CPU tensors -> the reference, TRITON_INTERPRET=1
-> Triton on the CPU; float64 always takes the reference, the ground truth the tests compare against.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .reference import proto_xent_reference
from .runtime import HAVE_TRITON, INTERPRET, dot_precision, kernel_dtype, use_triton
from .sim_xent import QUICK_AUTOTUNE, _chunks

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .sim_xent import _col_bias, _qk, _tile

    def _configs(quick: bool = QUICK_AUTOTUNE):
        """Tile shapes to autotune on a GPU (BLOCK_B images x BLOCK_K prototypes); one in the interpreter.

        The forward holds four fp32 (images x prototypes) tiles per K step (probabilities, their sum,
        logits and the logits' sum) and the prototypes' gradient two prototype tiles beside its
        accumulator: 64 x 64 tiles over two warpgroups (with 4 warps both spilled). maxnreg=255: left
        to itself ptxas capped the 8-warp FMA (ieee) variants at 128 registers and spilled. Every
        config compiles for sm_90 and sm_80 in every dtype without spills
        (tests/kernels/test_compile_for_gpu.py).
        """
        if INTERPRET:
            return [triton.Config({"BLOCK_B": 16, "BLOCK_K": 128}, num_warps=4)]
        configs = [triton.Config({"BLOCK_B": 64, "BLOCK_K": 64}, num_warps=8, num_stages=s, maxnreg=255)
                   for s in (3, 2)]
        return configs[:1] if quick else configs

    @triton.jit
    def _operand(ptr, idx, n, stride, feats, D, sd, ONE_CHUNK: tl.constexpr):
        """The tile _qk reads when a row is ONE_CHUNK (loaded once, reused by every use); else a placeholder."""
        tile = 0.0
        if ONE_CHUNK:
            tile = _tile(ptr, idx, idx < n, stride, feats, D, sd)
        return tile

    @triton.jit
    def _centred(raw, center_ptr, cols, K, inv_tt, HAS_CENTER: tl.constexpr):
        """(raw teacher logits - center) / tau_t."""
        if HAS_CENTER:
            raw -= _col_bias(center_ptr, cols, K, HAS_CENTER)[None, :]
        return raw * inv_tt

    @triton.jit
    def _teacher_logits(y, wt, y_ptr, wt_ptr, center_ptr, imgs, cols, B, K, D, syb, syd, stk, std, inv_tt,
                        HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """(y w_t^T - center) / tau_t for one teacher view's image block and a prototype tile, in fp32."""
        raw = _qk(y, wt, y_ptr, wt_ptr, imgs, cols, B, K, D, syb, syd, stk, std, BLOCK_B, BLOCK_K, BLOCK_D,
                  ONE_CHUNK, PRECISION)
        return _centred(raw, center_ptr, cols, K, inv_tt, HAS_CENTER)

    @triton.jit
    def _softmax(logits, lse, imgs, cols, B, K):
        """exp(logits - lse) in range, 0 outside: padded rows and columns must add nothing to sums or dots."""
        inside = (imgs < B)[:, None] & (cols < K)[None, :]
        return tl.where(inside, tl.exp(logits - lse[:, None]), 0.0)

    @triton.jit
    def _online_lse(row_max, sum_exp, logits, view):
        """One step of one view's online log-sum-exp; the views' states are the columns `view` selects."""
        old_max = tl.max(tl.where(view, row_max, -3.0e38), axis=1)
        old_sum = tl.sum(tl.where(view, sum_exp, 0.0), axis=1)
        new_max = tl.maximum(old_max, tl.max(logits, axis=1))
        new_sum = old_sum * tl.exp(old_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        return tl.where(view, new_max[:, None], row_max), tl.where(view, new_sum[:, None], sum_exp)

    @triton.autotune(configs=_configs(), key=["B", "K", "D"])
    @triton.jit
    def _teacher_kernel(y_ptr, wt_ptr, center_ptr, lse_t_ptr, B, K, D, syv, syb, syd, stk, std,
                        inv_tt, HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr, PRECISION: tl.constexpr):
        """Teacher view program_id(1), an image block: the log-sum-exp of its centred, sharpened logits."""
        imgs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        y_ptr += tl.program_id(1) * syv
        feats = tl.arange(0, BLOCK_D)
        y = _operand(y_ptr, imgs, B, syb, feats, D, syd, ONE_CHUNK)
        row_max = tl.full((BLOCK_B,), -3.0e38, tl.float32)
        sum_exp = tl.zeros((BLOCK_B,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            wt = _operand(wt_ptr, cols, K, stk, feats, D, std, ONE_CHUNK)
            raw = _qk(y, wt, y_ptr, wt_ptr, imgs, cols, B, K, D, syb, syd, stk, std, BLOCK_B, BLOCK_K, BLOCK_D,
                      ONE_CHUNK, PRECISION)
            logits = tl.where((cols < K)[None, :], _centred(raw, center_ptr, cols, K, inv_tt, HAS_CENTER),
                              float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, axis=1))
            sum_exp = sum_exp * tl.exp(row_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            row_max = new_max
        tl.store(lse_t_ptr + tl.program_id(1) * B + imgs, row_max + tl.log(sum_exp), mask=imgs < B)

    @triton.autotune(configs=_configs(), key=["B", "K", "D", "Vs"])
    @triton.jit
    def _forward_kernel(x_ptr, y_ptr, ws_ptr, wt_ptr, center_ptr, lse_t_ptr, lse_s_ptr, loss_ptr,
                        B, K, D, Vs, Vt, sxv, sxb, sxd, syv, syb, syd, swk, swd, stk, std, inv_ts, inv_tt,
                        HAS_CENTER: tl.constexpr, VIEWS: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                        PRECISION: tl.constexpr):
        """All views of an image block: each student view's online log-sum-exp and the image's loss.

        Per prototype tile and student view v: its logits (online log-sum-exp, summed over views); for
        v < Vt also teacher view v's probabilities, summed into P and met with their own crop's logits.
        The logits summed over views meet P once per tile.
        """
        imgs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        feats = tl.arange(0, BLOCK_D)
        views = tl.arange(0, VIEWS)[None, :]
        row_max = tl.full((BLOCK_B, VIEWS), -3.0e38, tl.float32)  # finite: exp(-inf - row_max) stays 0, not NaN
        sum_exp = tl.zeros((BLOCK_B, VIEWS), tl.float32)
        cross = tl.zeros((BLOCK_B,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            ws = _operand(ws_ptr, cols, K, swk, feats, D, swd, ONE_CHUNK)
            wt = _operand(wt_ptr, cols, K, stk, feats, D, std, ONE_CHUNK)
            probs = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
            logits_sum = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
            for v in range(0, Vs):
                x = _operand(x_ptr + v * sxv, imgs, B, sxb, feats, D, sxd, ONE_CHUNK)
                logits = _qk(x, ws, x_ptr + v * sxv, ws_ptr, imgs, cols, B, K, D, sxb, sxd, swk, swd, BLOCK_B,
                             BLOCK_K, BLOCK_D, ONE_CHUNK, PRECISION) * inv_ts  # 0 in padded columns
                if v < Vt:
                    y = _operand(y_ptr + v * syv, imgs, B, syb, feats, D, syd, ONE_CHUNK)
                    lse_t = tl.load(lse_t_ptr + v * B + imgs, mask=imgs < B, other=0.0)
                    p = _softmax(_teacher_logits(y, wt, y_ptr + v * syv, wt_ptr, center_ptr, imgs, cols, B, K, D,
                                                 syb, syd, stk, std, inv_tt, HAS_CENTER, BLOCK_B, BLOCK_K, BLOCK_D,
                                                 ONE_CHUNK, PRECISION), lse_t, imgs, cols, B, K)
                    probs += p
                    cross -= tl.sum(p * logits, axis=1)
                logits_sum += logits
                row_max, sum_exp = _online_lse(row_max, sum_exp, tl.where((cols < K)[None, :], logits,
                                                                          float("-inf")), views == v)
            cross += tl.sum(probs * logits_sum, axis=1)
        real = views < Vs
        lse = tl.where(real, row_max, 0.0) + tl.log(tl.where(real, sum_exp, 1.0))  # padded views: 0
        tl.store(lse_s_ptr + views * B + imgs[:, None], lse, mask=(imgs < B)[:, None] & real)
        pairs = tl.where(views < Vt, Vt - 1, Vt).to(tl.float32)
        tl.store(loss_ptr + imgs, tl.sum(pairs * lse, axis=1) - cross, mask=imgs < B)

    @triton.autotune(configs=_configs(), key=["B", "K", "D"])
    @triton.jit
    def _grad_rows_kernel(a_ptr, wl_ptr, ws_ptr, center_ptr, lse_ptr, g_ptr, share_ptr, out_ptr,
                          B, K, D, Vt, sav, sab, sad, slk, sld, swk, swd, sov, sob, sod, scale, coef,
                          TEACHER: tl.constexpr, HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                          PRECISION: tl.constexpr):
        """View program_id(1) of an image block, features program_id(2): its softmax @ w_student over K.

        TEACHER: the rows are a teacher view's (logits from w_l = w_teacher, centred), and the product,
        G_t = p_t w_s, is stored in fp32: the teacher's share of every student view's gradient. Else the
        rows are student view s's, and d loss / d x_s = coef g (n(s) q_s w_s - sum_t G_t + [s < Vt] G_s).
        With ONE_CHUNK a student's w_s tile serves both its logits and the product.
        """
        imgs = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        view = tl.program_id(1)
        douts = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        a_ptr += view * sav
        a = _operand(a_ptr, imgs, B, sab, douts, D, sad, ONE_CHUNK)
        lse = tl.load(lse_ptr + view * B + imgs, mask=imgs < B, other=0.0)
        acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            w = _tile(ws_ptr, cols, cols < K, swk, douts, D, swd)
            if TEACHER:
                wl = _operand(wl_ptr, cols, K, slk, douts, D, sld, ONE_CHUNK)
                logits = _teacher_logits(a, wl, a_ptr, wl_ptr, center_ptr, imgs, cols, B, K, D, sab, sad, slk, sld,
                                         scale, HAS_CENTER, BLOCK_B, BLOCK_K, BLOCK_D, ONE_CHUNK, PRECISION)
            else:
                logits = _qk(a, w, a_ptr, ws_ptr, imgs, cols, B, K, D, sab, sad, swk, swd, BLOCK_B, BLOCK_K,
                             BLOCK_D, ONE_CHUNK, PRECISION) * scale
            # softmax values lie in [0, 1]: the cast to the operand dtype cannot overflow
            acc = tl.dot(_softmax(logits, lse, imgs, cols, B, K).to(w.dtype), w, acc, input_precision=PRECISION)
        at = imgs[:, None] * sob + douts[None, :] * sod
        inside = (imgs < B)[:, None] & (douts < D)[None, :]
        if TEACHER:
            tl.store(out_ptr + view * sov + at, acc, mask=inside)
        else:
            shares = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
            for t in range(0, Vt):
                shares += tl.load(share_ptr + t * sov + at, mask=inside, other=0.0)
            own = tl.load(share_ptr + view * sov + at, mask=inside & (view < Vt), other=0.0)
            pairs = tl.where(view < Vt, Vt - 1, Vt).to(tl.float32)
            grad = (pairs * acc - shares + own) * (coef * tl.load(g_ptr))
            tl.store(out_ptr + view * sov + at, grad.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.autotune(configs=_configs(), key=["B", "K", "D", "Vs"])
    @triton.jit
    def _grad_w_kernel(x_ptr, y_ptr, ws_ptr, wt_ptr, center_ptr, lse_s_ptr, lse_t_ptr, g_ptr, dw_ptr,
                       B, K, D, Vs, Vt, sxv, sxb, sxd, syv, syb, syd, swk, swd, stk, std, sdk, sdd,
                       inv_ts, inv_tt, coef, HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                       PRECISION: tl.constexpr):
        """d loss / d w_s for a prototype tile and feature block: coef g sum_s (n(s) q_s - target_s)^T x_s
        over image blocks, written as sum_t p_t^T x_t + sum_s (n(s) q_s - P)^T x_s so the teacher tiles
        of an image block are made once for all its student views."""
        cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
        douts = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        ws = _operand(ws_ptr, cols, K, swk, douts, D, swd, ONE_CHUNK)
        wt = _operand(wt_ptr, cols, K, stk, douts, D, std, ONE_CHUNK)
        acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            imgs = b0 + tl.arange(0, BLOCK_B)
            probs = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
            for t in range(0, Vt):
                y = _operand(y_ptr + t * syv, imgs, B, syb, douts, D, syd, ONE_CHUNK)
                lse_t = tl.load(lse_t_ptr + t * B + imgs, mask=imgs < B, other=0.0)
                p = _softmax(_teacher_logits(y, wt, y_ptr + t * syv, wt_ptr, center_ptr, imgs, cols, B, K, D, syb,
                                             syd, stk, std, inv_tt, HAS_CENTER, BLOCK_B, BLOCK_K, BLOCK_D, ONE_CHUNK,
                                             PRECISION), lse_t, imgs, cols, B, K)
                probs += p
                x = _tile(x_ptr + t * sxv, imgs, imgs < B, sxb, douts, D, sxd)
                acc = tl.dot(tl.trans(p.to(x.dtype)), x, acc, input_precision=PRECISION)
            for s in range(0, Vs):
                x = _tile(x_ptr + s * sxv, imgs, imgs < B, sxb, douts, D, sxd)
                logits = _qk(x, ws, x_ptr + s * sxv, ws_ptr, imgs, cols, B, K, D, sxb, sxd, swk, swd, BLOCK_B,
                             BLOCK_K, BLOCK_D, ONE_CHUNK, PRECISION) * inv_ts
                lse_s = tl.load(lse_s_ptr + s * B + imgs, mask=imgs < B, other=0.0)
                pairs = tl.where(s < Vt, Vt - 1, Vt).to(tl.float32)
                # in [-Vt, Vt]: the cast to the operand dtype cannot overflow
                d = pairs * _softmax(logits, lse_s, imgs, cols, B, K) - probs
                acc = tl.dot(tl.trans(d.to(x.dtype)), x, acc, input_precision=PRECISION)
        dw = acc * (coef * tl.load(g_ptr))
        tl.store(dw_ptr + cols[:, None] * sdk + douts[None, :] * sdd, dw.to(dw_ptr.dtype.element_ty),
                 mask=(cols < K)[:, None] & (douts < D)[None, :])


def _feature_chunks(d: int, dtype: torch.dtype, precision: str) -> dict:
    """sim_xent's walk over the D features, except that fp32 rows wider than 64 go in chunks of 64: with
    128-wide fp32 tiles the prototypes' gradient (two prototype tiles and an accumulator) spilled and
    outgrew an H100's shared memory."""
    chunks = _chunks(d, dtype, precision)
    if dtype == torch.float32 and chunks["BLOCK_D"] > 64:
        return {"BLOCK_D": 64, "ONE_CHUNK": d <= 64}
    return chunks


def _flags(center, dtype: torch.dtype, d: int) -> dict:
    """The constexprs every kernel takes: one compiled variant per combination."""
    precision = dot_precision(dtype)
    return {"HAS_CENTER": center is not None, "PRECISION": precision, **_feature_chunks(d, dtype, precision)}


class _ProtoXentFunction(torch.autograd.Function):
    """The loss from the fused kernels; saves only the inputs and a log-sum-exp per row."""

    @staticmethod
    def forward(ctx, student, w_student, teacher, w_teacher, center, student_temp, teacher_temp):
        (vs, b, d), vt, k = student.shape, teacher.shape[0], w_student.shape[0]
        flags = _flags(center, student.dtype, d)
        opt = center if center is not None else w_student  # never read without HAS_CENTER
        lse_t = torch.empty(vt, b, dtype=torch.float32, device=student.device)
        lse_s = torch.empty(vs, b, dtype=torch.float32, device=student.device)
        per_image = torch.empty(b, dtype=torch.float32, device=student.device)
        _teacher_kernel[lambda meta: (triton.cdiv(b, meta["BLOCK_B"]), vt)](
            teacher, w_teacher, opt, lse_t, b, k, d, *teacher.stride(), *w_teacher.stride(), 1.0 / teacher_temp,
            **flags)
        _forward_kernel[lambda meta: (triton.cdiv(b, meta["BLOCK_B"]),)](
            student, teacher, w_student, w_teacher, opt, lse_t, lse_s, per_image, b, k, d, vs, vt, *student.stride(),
            *teacher.stride(), *w_student.stride(), *w_teacher.stride(), 1.0 / student_temp, 1.0 / teacher_temp,
            VIEWS=triton.next_power_of_2(vs), **flags)
        ctx.save_for_backward(student, w_student, teacher, w_teacher, center, lse_s, lse_t)
        ctx.temps = (student_temp, teacher_temp)
        return per_image.sum() / (vt * (vs - 1) * b)

    @staticmethod
    def backward(ctx, grad_loss):
        student, w_student, teacher, w_teacher, center, lse_s, lse_t = ctx.saved_tensors
        (vs, b, d), vt, k = student.shape, teacher.shape[0], w_student.shape[0]
        student_temp, teacher_temp = ctx.temps
        flags = _flags(center, student.dtype, d)
        opt = center if center is not None else w_student
        g = grad_loss.float().reshape(1)
        coef = 1.0 / (vt * (vs - 1) * b * student_temp)
        chunks = triton.cdiv(d, flags["BLOCK_D"])
        grad_student = grad_w = None
        if ctx.needs_input_grad[0]:
            shares = torch.empty(vt, b, d, dtype=torch.float32, device=student.device)
            grad_student = torch.empty(vs, b, d, dtype=student.dtype, device=student.device)
            for rows, w_logits, view_count, lse, out, scale, teacher_rows in (
                    (teacher, w_teacher, vt, lse_t, shares, 1.0 / teacher_temp, True),
                    (student, w_student, vs, lse_s, grad_student, 1.0 / student_temp, False)):
                _grad_rows_kernel[lambda meta: (triton.cdiv(b, meta["BLOCK_B"]), view_count, chunks)](
                    rows, w_logits, w_student, opt, lse, g, shares, out, b, k, d, vt, *rows.stride(),
                    *w_logits.stride(), *w_student.stride(), *out.stride(), scale, coef, TEACHER=teacher_rows,
                    **{**flags, "HAS_CENTER": flags["HAS_CENTER"] and teacher_rows})
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty(k, d, dtype=w_student.dtype, device=student.device)
            _grad_w_kernel[lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), chunks)](
                student, teacher, w_student, w_teacher, opt, lse_s, lse_t, g, grad_w, b, k, d, vs, vt,
                *student.stride(), *teacher.stride(), *w_student.stride(), *w_teacher.stride(), *grad_w.stride(),
                1.0 / student_temp, 1.0 / teacher_temp, coef, **flags)
        return grad_student, grad_w, None, None, None, None, None


def _validate(student, teacher, w_student, w_teacher, center, student_temp, teacher_temp) -> None:
    """Shape and argument rules, checked on every path without reading device memory."""
    if student.dim() != 3 or teacher.dim() != 3:
        raise ValueError(f"proto_xent: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be "
                         "3-D: (Vs, B, D) and (Vt, B, D)")
    (vs, b, d), vt = student.shape, teacher.shape[0]
    if not 1 <= vt <= vs or vs < 2:
        raise ValueError(f"proto_xent: Vs={vs} student views and Vt={vt} teacher views: need Vs >= 2 and "
                         "1 <= Vt <= Vs (teacher view t is student view t's crop)")
    if teacher.shape[1:] != student.shape[1:]:
        raise ValueError(f"proto_xent: teacher {tuple(teacher.shape)}: must have the student's images and "
                         f"features (Vt, {b}, {d})")
    if w_student.dim() != 2 or w_student.shape[1] != d:
        raise ValueError(f"proto_xent: w_student {tuple(w_student.shape)}: must be (K, D) prototypes with D={d}")
    if w_teacher.shape != w_student.shape:
        raise ValueError(f"proto_xent: w_teacher {tuple(w_teacher.shape)}: must match w_student "
                         f"{tuple(w_student.shape)}")
    k = w_student.shape[0]
    if min(b, d, k) < 1:
        raise ValueError(f"proto_xent: B={b}, D={d}, K={k}: every size must be >= 1")
    if center is not None and center.shape != (k,):
        raise ValueError(f"proto_xent: center {tuple(center.shape)}: must have one value per prototype ({k},)")
    tensors = (student, teacher, w_student, w_teacher) + (() if center is None else (center,))
    if not all(t.is_floating_point() for t in tensors):
        raise ValueError(f"proto_xent: inputs must be floating point (got {', '.join(str(t.dtype) for t in tensors)})")
    for name, temp in (("student_temp", student_temp), ("teacher_temp", teacher_temp)):
        if not (isinstance(temp, (int, float)) and math.isfinite(temp) and temp > 0):
            raise ValueError(f"proto_xent: {name}={temp!r}: must be a finite Python number > 0")


class ProtoXent(NamedTuple):
    loss: torch.Tensor           # 0-d float32: the mean cross-entropy over view pairs and images
    teacher_mean: torch.Tensor   # (K,) float32: the mean teacher logit per prototype, before centring


def proto_xent(student: torch.Tensor, teacher: torch.Tensor, w_student: torch.Tensor,
               w_teacher: torch.Tensor | None = None, center: torch.Tensor | None = None, *, student_temp: float,
               teacher_temp: float, impl: str = "auto") -> ProtoXent:
    """The loss and the teacher's mean logits; gradients flow to `student` and `w_student` only.
    w_teacher None: the student's prototypes (detached), as SwAV has it. `impl` is auto | triton | reference."""
    w_teacher = w_student if w_teacher is None else w_teacher
    _validate(student, teacher, w_student, w_teacher, center, student_temp, teacher_temp)
    dtypes = {t.dtype for t in (student, teacher, w_student, w_teacher)}
    if torch.float64 in dtypes and impl == "triton":
        raise ValueError("proto_xent: impl='triton' takes fp32, fp16 or bf16; float64 runs on the reference")
    if torch.float64 in dtypes or not use_triton("proto_xent", student, impl):
        return ProtoXent(*proto_xent_reference(student, teacher, w_student, w_teacher, center,
                                               student_temp=student_temp, teacher_temp=teacher_temp))
    dtype = student.dtype
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    dtype = kernel_dtype(dtype)
    center = None if center is None else center.detach().float().contiguous()
    loss = _ProtoXentFunction.apply(student.to(dtype), w_student.to(dtype), teacher.detach().to(dtype),
                                    w_teacher.detach().to(dtype), center, float(student_temp), float(teacher_temp))
    with torch.no_grad():   # the mean row's logits (module docstring)
        teacher_mean = teacher.flatten(0, 1).float().mean(0) @ w_teacher.float().T
    return ProtoXent(loss, teacher_mean)
