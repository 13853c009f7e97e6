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
