"""Pure-torch references for every kernel: the CPU path, and the ground truth tests and benchmarks use.

Written for clarity, not speed: they materialise the full (M x P) logits.
"""
from __future__ import annotations

import torch


def sim_xent_reference(q: torch.Tensor, k: torch.Tensor, *, scale: float,
                       col_bias: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                       instance_ids: torch.Tensor | None = None, self_mask: bool = False,
                       row_offset: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy over similarity logits `scale * q k^T + col_bias`.

    q: (M, D) rows; k: (P, D) columns. Exactly one of
      targets (M,) int64: one target column per row, or
      instance_ids (P,) int64: ids of the columns; rows are columns row_offset..row_offset+M-1, and the
        positives of row i are the other columns with its id (loss_i = their mean of -log softmax).
    self_mask removes column row_offset + i from row i's softmax (a row is not its own negative).
    Half-precision inputs are computed in float32; float64 stays float64.
    """
    if (targets is None) == (instance_ids is None):
        raise ValueError("sim_xent: give exactly one of targets or instance_ids")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"sim_xent: reduction={reduction!r}: must be mean, sum or none")
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = scale * (q.to(compute_dtype) @ k.to(compute_dtype).T)
    if col_bias is not None:
        logits = logits + col_bias.to(compute_dtype)[None, :]
    m, p = logits.shape
    rows = torch.arange(m, device=q.device)
    if self_mask:
        self_cols = torch.zeros(m, p, dtype=torch.bool, device=q.device)
        self_cols[rows, rows + row_offset] = True
        logits = logits.masked_fill(self_cols, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    if targets is not None:
        per_row = -log_prob[rows, targets]
    else:
        row_ids = instance_ids[row_offset:row_offset + m]
        positive = row_ids[:, None] == instance_ids[None, :]
        positive[rows, rows + row_offset] = False
        n_pos = positive.sum(dim=1)
        # Off the GPU a clear error; on the GPU a NaN row (0/0), as the kernel does: no host sync.
        if not logits.is_cuda and bool((n_pos == 0).any()):
            raise ValueError("sim_xent: a row has no positive column (each instance needs >= 2 views)")
        per_row = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1)) / n_pos
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


RIDGE_FORMS = ("auto", "primal", "dual")


def ridge_is_dual(x: torch.Tensor, form: str) -> bool:
    """Whether to solve the n x n dual system: asked for, or "auto" and it is the smaller (n < D)."""
    if form not in RIDGE_FORMS:
        raise ValueError(f"ridge: form={form!r}: must be one of {', '.join(RIDGE_FORMS)}")
    return form == "dual" or (form == "auto" and x.shape[1] < x.shape[2])


def ridge_reference(x: torch.Tensor, y: torch.Tensor, lam, *, form: str = "auto") -> torch.Tensor:
    """Ridge regression weights W (T, D, C) from x (T, n, D) to y (T, n, C), one system per task.

    dual:   W = x^T (x x^T + lam I)^-1 y   (an n x n system)
    primal: W = (x^T x + lam I)^-1 x^T y   (a D x D system); both are the same W.
    "auto" solves the smaller system. lam > 0 is a number, a 0-d tensor or one value per task (T,).
    Half-precision inputs are computed in float32; float64 stays float64.
    """
    dual = ridge_is_dual(x, form)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dtype), y.to(dtype)
    lam = torch.as_tensor(lam, dtype=dtype, device=x.device).reshape(-1, 1, 1)
    gram = x @ x.mT if dual else x.mT @ x
    system = gram + lam * torch.eye(gram.shape[-1], dtype=dtype, device=x.device)
    if dual:
        return x.mT @ torch.linalg.solve(system, y)
    return torch.linalg.solve(system, x.mT @ y)


# Colour augmentation (the `augment` family): one row of AUGMENT_COLUMNS per image.
AUGMENT_COLUMNS = ("flip", "jitter", "brightness", "contrast", "saturation", "hue", "gray", "solarize")
COLOR_OPS = ("brightness", "contrast", "saturation", "hue")   # `order` indexes these
LUMA = (0.299, 0.587, 0.114)      # ITU-R 601, as PIL (torchvision's tensor kernels use 0.2989 for red)


def luma(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of float (B,3,H,W) images, (B,1,H,W)."""
    return (LUMA[0] * images[:, 0] + LUMA[1] * images[:, 1] + LUMA[2] * images[:, 2]).unsqueeze(1)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = _per_image(factor)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-image factor (B,), on [0, 1] float images."""
    return (images * _per_image(factor)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean luma by a per-image factor (B,)."""
    return _blend(images, luma(images).mean((1, 2, 3), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its own luma image by a per-image factor (B,)."""
    return _blend(images, luma(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by a per-image shift (B,) in turns ([-0.5, 0.5]), keeping HSV value and saturation.

    Hue is computed in sixths of a turn; each channel is then value - chroma * t(k), t the trapezoid
    clamp(min(k, 4 - k), 0, 1) at k = (hue6 + 5, 3, 1) mod 6 for R, G, B: the HSV -> RGB map without
    branching on the sector.
    """
    r, g, b = images.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    divisor = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue6 = torch.where(value == r, (g - b) / divisor,
                       torch.where(value == g, (b - r) / divisor + 2, (r - g) / divisor + 4))
    hue6 = hue6 + 6 * shift.view(-1, 1, 1)
    channels = []
    for offset in (5, 3, 1):
        k = torch.remainder(hue6 + offset, 6)
        channels.append(value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, 1)


COLOR_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """[0, 1] intensities at or above `threshold` become 1 - x (torchvision's solarize on floats)."""
    return torch.where(images >= threshold, 1 - images, images)


def colour_augment_reference(images: torch.Tensor, params: torch.Tensor, *, order=(), mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0), value_range: float = 1.0, solarize_threshold: float = 0.5,
                             colour: bool = True, finish: bool = True,
                             out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-image colour augmentation of (B,3,H,W) images, any dtype and strides, read as x / value_range.

    params (B, 8), columns AUGMENT_COLUMNS. colour: flip, then where `jitter`, the ops `order`
    (indices into COLOR_OPS) with factors brightness, contrast, saturation, hue; then grayscale where
    `gray`. finish: solarize where `solarize`, then (x - mean) / std. The two stages split so a
    spatial op (blur) can run between them. Returns (B,3,H,W) channels_last: out_dtype after finish,
    float32 [0, 1] after colour alone.
    """
    p = params.float()
    x = images.float() / value_range
    if colour:
        x = torch.where(_per_image(p[:, 0] > 0.5), x.flip(3), x).clamp(0, 1)
        if order:
            jittered = x
            for op in order:
                jittered = COLOR_FNS[op](jittered, p[:, 2 + op])
            x = torch.where(_per_image(p[:, 1] > 0.5), jittered, x)
        x = torch.where(_per_image(p[:, 6] > 0.5), luma(x).expand_as(x), x)
    if not finish:
        return x.contiguous(memory_format=torch.channels_last)
    x = torch.where(_per_image(p[:, 7] > 0.5), solarize(x, solarize_threshold), x)
    x = (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.to(out_dtype).contiguous(memory_format=torch.channels_last)


def proto_xent_reference(student: torch.Tensor, teacher: torch.Tensor, w_student: torch.Tensor,
                         w_teacher: torch.Tensor, center: torch.Tensor | None = None, *, student_temp: float,
                         teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy between a teacher's and a student's softmax over K prototypes (DINO, SwAV).

    student: (Vs, B, D) rows, teacher: (Vt, B, D) rows with Vt <= Vs, where teacher view t and student view
    t are the same crop (the global views come first); w_student, w_teacher: (K, D) prototypes; center:
    (K,) subtracted from the teacher's logits (DINO's centre; SwAV's Sinkhorn scaling as -eps log r) or None.
    With T_t = teacher_t w_teacher^T and S_s = student_s w_student^T:

        loss = mean over the pairs (t, s), s != t, and the images b of
               -sum_k softmax((T_t[b] - center) / teacher_temp)_k log softmax(S_s[b] / student_temp)_k

    and teacher_mean = the mean of T's Vt x B rows (K,) (before centring), DINO's batch centre. The
    teacher side carries no gradient. Returns (loss, teacher_mean), float32 (float64 kept).

    The eager form: every student view's target is the sum of the teacher views' softmaxes less its own
    (its own crop is no pair of its), so the Vt x (Vs - 1) pairs cost Vs cross-entropies; it still holds
    Vs x B x K logits, log-probabilities and their gradients.
    """
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    vs, batch, _ = student.shape
    vt = teacher.shape[0]
    if not 1 <= vt <= vs or teacher.shape[1:] != student.shape[1:] or vs < 2:
        raise ValueError(f"proto_xent: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}: need "
                         "(Vs, B, D) and (Vt, B, D) with 1 <= Vt <= Vs and Vs >= 2")
    teacher_logits = teacher.detach().to(dtype).flatten(0, 1) @ w_teacher.detach().to(dtype).T
    teacher_mean = teacher_logits.mean(0)
    if center is not None:
        teacher_logits = teacher_logits - center.detach().to(dtype)
    probs = torch.softmax(teacher_logits / teacher_temp, dim=1).view(vt, batch, -1)
    log_q = torch.log_softmax((student.to(dtype).flatten(0, 1) @ w_student.to(dtype).T) / student_temp,
                              dim=1).view(vs, batch, -1)
    total = probs.sum(0)
    loss = 0
    for s in range(vs):
        target = total - probs[s] if s < vt else total
        loss = loss - (target * log_q[s]).sum()
    pairs = vt * (vs - 1)
    return loss / (pairs * batch), teacher_mean
