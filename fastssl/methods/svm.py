"""MetaOptNet's multi-class (Crammer-Singer) SVM as an SSL head: each image is a
class, an SVM is fitted on its support views, and its queries are classified by that SVM.

The QP, per task (b classes, n = n_supp * b support rows x_i, unit rows, row v*b + j of class j;
Y the n x b one-hot labels), in MetaOptNet's dual form:

    min_alpha  1/2 tr(alpha^T (K + rho I) alpha) - tr(Y^T alpha)
    s.t.       alpha_im <= C Y_im  (all i, m),     sum_m alpha_im = 0  (all i)

with K = X X^T. This is the Crammer-Singer dual: w_m = sum_i alpha_im x_i, alpha_i,y_i in [0, C] and the
other alpha_im <= 0 (alpha_im = C Y_im - eta_im, eta_i >= 0 the multipliers of row i's margin
constraints, sum_m eta_im = C). rho = 1 is MetaOptNet's `block_kernel_matrix += 1.0 * I`: it amounts
to giving every support row a private unit feature that the queries lack (kernel K + I on the
support, X Q^T between support and queries), and it makes the QP rho-strongly convex, so alpha is
unique (K alone is rank <= D < n in SSL) and the solver below converges linearly.
Query logits: `scale * q W` with W = X^T alpha (D x b), i.e. the kernel q X^T alpha; cross-entropy
against each query's image. `scale` is learnable as in MetaOptNet and starts at 1 / temperature, so
that "temperature" means what it does for every head (as in the r2d2 head).

Solver: accelerated projected gradient (Nesterov's constant-momentum scheme for strongly convex
objectives) for a fixed number of iterations, batched over tasks (T x n x b), no Python loop over
tasks and no host synchronisation. Why this method: the feasible set is a product over support rows
of shifted, scaled simplices (beta_i = C Y_i - alpha_i lies in {beta >= 0, sum beta = C}), onto which
the Euclidean projection is exact and cheap (sort-based, Duchi et al. 2008), so every iterate is
feasible; the objective's gradient (K + rho I) alpha - Y is two thin matmuls X (X^T alpha); and with
step 1/L (L >= lambda_max(K) + rho) and momentum (1 - sqrt(rho/L)) / (1 + sqrt(rho/L)) the error
shrinks by (1 - sqrt(rho / L)) per iteration. Measured (alpha's relative error against a 3000-step
float64 solve, one task of 128 images, D = 64, C = 0.1): spread unit rows (lambda_max ~ 6) 2.6e-8
after 30 steps; strongly correlated rows as at initialisation (lambda_max ~ 116 ~ n) 1.3e-2 after 30,
1.5e-5 after 100. method.svm.iters (default 30) trades that against time; method.svm.tasks shrinks n
and with it L. Block coordinate descent would be exact per row but is
sequential over the n rows, and an interior-point method (qpth, MetaOptNet's) needs n*b x n*b KKT
factorisations. L is a guaranteed, differentiable upper bound: lambda_max <= ||M^(2^s)||_F^(1/2^s)
for the smaller Gram matrix M (X^T X or X X^T, same nonzero spectrum), computed by s = 5 normalised
squarings (overestimate at most min(n, D)^(1/32), i.e. <= 1.17 for 128 features), not by eigvalsh,
whose convergence check reads its status on the host (a synchronisation on a GPU).

Gradients: by unrolling the iterations (autograd through every step, the bound L and the sort-based
projections). This is the exact gradient of what is computed, converged or not, which a fixed and
small iteration budget needs: implicit differentiation of the KKT system is the gradient of the exact
optimum, which the forward does not reach with few iterations, and it would need the active set (a
data-dependent, host-side decision) and an (n*b)-sized linear solve. Memory: autograd keeps a handful
of T x n x b tensors per iteration (iterate, sort indices, clamp mask), about 12 MB for 30 iterations
at n = b = 128.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastssl.task.layout import RankRows, Task, TaskLayout, TaskLogits, mixed_loss, split_views

from fastssl.loaders.rules import check_temperature, finite_in, int_in, require

from . import register
from .base import Method, MethodContext

LAMBDA_SQUARINGS = 5


def split_tasks(task: Task, tasks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's B images as `tasks` independent tasks of b = B / tasks consecutive images.

    Returns support (T, n_supp * b, D) with row v*b + j = view v of image t*b + j (class j),
    queries (T, n_query * b, D) with row u*b + j = query view u of image t*b + j, and the batch image of
    each query (T, n_query * b) = t*b + j (its class within task t is j).
    """
    n_supp, batch, dim = task.support.shape
    if tasks < 1 or batch % tasks:
        raise ValueError(f"svm: method.svm.tasks={tasks} must divide the batch of {batch} images")
    b = batch // tasks
    support = task.support.reshape(n_supp, tasks, b, dim).transpose(0, 1).reshape(tasks, n_supp * b, dim)
    n_query = task.queries.shape[0] // batch
    queries = task.queries.reshape(n_query, tasks, b, dim).transpose(0, 1).reshape(tasks, n_query * b, dim)
    images = torch.arange(batch, device=task.queries.device).reshape(tasks, 1, b).expand(-1, n_query, -1)
    return support, queries, images.reshape(tasks, n_query * b)


def lambda_max_bound(x: torch.Tensor, squarings: int = LAMBDA_SQUARINGS) -> torch.Tensor:
    """(T,) upper bounds of lambda_max(x_t x_t^T) for x (T, n, D): ||M^(2^s)||_F^(1/2^s) >= lambda_max(M)
    (the Frobenius norm of a PSD matrix's power bounds its top eigenvalue's), with M the smaller Gram
    matrix, by s normalised squarings (no overflow); differentiable, no host sync."""
    m = x.mT @ x if x.shape[-1] <= x.shape[-2] else x @ x.mT
    norm = torch.linalg.matrix_norm(m)
    log_c, n = norm.log(), m / norm[:, None, None]
    for _ in range(squarings):
        p = n @ n
        norm = torch.linalg.matrix_norm(p)
        log_c, n = 2 * log_c + norm.log(), p / norm[:, None, None]
    return (log_c / 2 ** squarings).exp()


def project_rows(alpha: torch.Tensor, bound: torch.Tensor, c: float) -> torch.Tensor:
    """Euclidean projection of each row of alpha (..., b) onto {a <= bound, sum a = 0}, bound = C * one-hot:
    beta = bound - a lies in the simplex scaled to C; projected by sorting (Duchi et al. 2008)."""
    v = bound - alpha
    u = v.sort(dim=-1, descending=True).values
    excess = u.cumsum(dim=-1) - c
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    # >= 1 in exact arithmetic (the first entry always qualifies); 0 only for a NaN row, which must reach
    # the loss (and the non-finite guard) as NaN rather than fail as index -1.
    rho = (u - excess / k > 0).sum(dim=-1, keepdim=True).clamp(min=1)
    theta = excess.gather(-1, rho - 1) / rho.to(v.dtype)
    return bound - (v - theta).clamp(min=0)


def svm_dual(x: torch.Tensor, c: float, iters: int, ridge: float = 1.0,
             n_classes: int | None = None) -> torch.Tensor:
    """alpha (T, n, b) of the Crammer-Singer dual (module docstring) on support rows x (T, n, D), row r of
    class r mod b (b = n_classes, default n: one row per class), after `iters` accelerated projected
    gradient steps from alpha = 0 (feasible). Differentiable by unrolling."""
    if c <= 0 or ridge <= 0 or iters < 1:
        raise ValueError(f"svm_dual: C={c}, ridge={ridge}, iters={iters}: need C > 0, ridge > 0, iters >= 1")
    tasks, n, _ = x.shape
    b = n if n_classes is None else n_classes
    if n % b:
        raise ValueError(f"svm_dual: {n} support rows are not a whole number of views of {b} classes")
    labels = torch.eye(b, device=x.device, dtype=x.dtype).repeat(n // b, 1)     # (n, b)
    bound = c * labels
    lipschitz = (lambda_max_bound(x) + ridge)[:, None, None]                   # (T, 1, 1)
    q = (ridge / lipschitz).sqrt()
    momentum = (1 - q) / (1 + q)
    alpha = x.new_zeros(tasks, n, b)
    y = alpha
    for _ in range(iters):
        grad = x @ (x.mT @ y) + ridge * y - labels
        new = project_rows(y - grad / lipschitz, bound, c)
        y = new + momentum * (new - alpha)
        alpha = new
    return alpha


@register("svm")
class SVMHead(Method):
    """Crammer-Singer SVM on each task's support views, queries classified by it (module docstring).

    The batch's B images form `tasks` independent tasks of B / tasks images (consecutive in the batch),
    solved together; the loss is the mean cross-entropy over all queries (every task has as many, so
    it is also the mean of the tasks' losses). Plain torch: method.loss_impl does not apply.
    Under query mixing a query's partner must be an image of the same task (the trainer's query mixer
    draws partners within each block of B / tasks images), so its class is again image mod b.

    Under torchrun (`rank_loss`) a rank solves only the tasks its images belong to and computes only its
    own queries' cross-entropy: with tasks a multiple of the world size each rank holds tasks / W whole
    tasks and solves just those (from its own rows; no other rank's rows enter its loss); with the world
    a multiple of tasks (tasks = 1: one task over the whole batch) a task spans W / tasks ranks, each of
    which solves it from the gathered support (the same small QP, redundantly: splitting the unrolled
    solver would put collectives in each of its iterations and their backward) and classifies its own
    queries. Otherwise tasks straddle ranks unevenly, and every rank computes the whole loss (the
    base contract's default).
    """

    splits_rows = True

    @dataclass
    class Settings:
        temperature: float = 0.2   # the logits' starting scale is 1 / temperature (learnable)
        c: float = 0.1             # the SVM's C (MetaOptNet's C_reg), > 0
        iters: int = 30            # accelerated projected-gradient steps on the dual QP (unrolled)
        tasks: int = 1             # independent tasks the batch's images are split into (must divide it)

    RENAMED = {"svm_c": "c", "svm_iters": "iters", "svm_tasks": "tasks"}
    MAX_ITERS = 1000               # unrolled: memory grows with every step

    def __init__(self, temperature: float, c: float = 0.1, iters: int = 30, tasks: int = 1, ridge: float = 1.0):
        super().__init__()
        if not (c > 0 and iters >= 1 and tasks >= 1 and ridge > 0):
            raise ValueError(f"svm: C={c}, iters={iters}, tasks={tasks}, ridge={ridge}: need C > 0, "
                             "iters >= 1, tasks >= 1, ridge > 0")
        self.c, self.iters, self.tasks, self.ridge = c, iters, tasks, ridge
        self.scale = nn.Parameter(torch.tensor(1.0 / temperature))

    def task_logits(self, z: torch.Tensor, layout: TaskLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, n_query * b, b) query logits and the batch image of each query (T, n_query * b)."""
        support, queries, images = split_tasks(split_views(z, layout, "svm"), self.tasks)
        return self._solved_logits(support, queries, support.shape[1] // layout.n_supp), images

    def _solved_logits(self, support: torch.Tensor, queries: torch.Tensor, b: int) -> torch.Tensor:
        """Each task's SVM fitted on its support (T, n_supp * b, D), then its queries' (T, M, b) logits."""
        alpha = svm_dual(support, self.c, self.iters, self.ridge, n_classes=b)
        weights = support.mT @ alpha                                          # (T, D, b)
        return self.scale * (queries @ weights)

    @classmethod
    def check(cls, settings: Settings, cfg, world: int) -> None:
        check_temperature("method.svm.temperature", settings.temperature)
        finite_in("method.svm.c", settings.c, 1e-6, 1e6)   # the dual's box, in fp32 next to O(1) kernel values
        int_in("method.svm.iters", settings.iters, 1, cls.MAX_ITERS)
        batch, tasks = cfg.loader.batch_size, settings.tasks
        require(tasks >= 1, "method.svm.tasks", tasks, "must be >= 1")
        require(tasks <= batch, "method.svm.tasks", tasks,
                f"must be <= loader.batch_size ({batch}): a task holds at least one image")
        require(batch % tasks == 0, "method.svm.tasks", tasks,
                f"must divide loader.batch_size ({batch}): each task holds batch_size / tasks images")
        if cfg.task.query_mix != "none" and world > 1:
            require(tasks % world == 0 or world % tasks == 0, "method.svm.tasks", tasks,
                    f"with query mixing under {world} processes, the tasks and the world size must divide one "
                    "another (mixing partners come from the same rank and must share a task)")

    @classmethod
    def build(cls, settings: Settings, ctx: MethodContext) -> SVMHead:
        return cls(settings.temperature, settings.c, settings.iters, settings.tasks)

    def mix_blocks(self, world: int) -> int:
        """Mixing partners must share a task. Each rank holds B / W consecutive images of the global batch,
        i.e. tasks / W whole tasks (or a part of one task when W >= tasks)."""
        return max(1, self.tasks // world)

    def forward(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits, images = self.task_logits(z, layout)
        flat = logits.reshape(-1, logits.shape[-1])
        b = logits.shape[-1]

        def loss_of(batch_images: torch.Tensor) -> torch.Tensor:   # class within a task = image mod b
            return F.cross_entropy(flat, batch_images % b)

        return mixed_loss(loss_of, images.reshape(-1), layout, 0)

    def rank_loss(self, z: torch.Tensor, layout: TaskLayout, targets: torch.Tensor | None,
                  rows: RankRows) -> torch.Tensor:
        """The tasks of this rank's images solved, its own queries' terms summed, over the global query count."""
        if rows.whole:
            return self(z, layout, targets)
        if not (self.tasks % rows.world == 0 or rows.world % self.tasks == 0):
            return Method.rank_loss(self, z, layout, targets, rows)   # the whole loss / world
        support, queries, images = split_tasks(split_views(z, layout, "svm"), self.tasks)
        b = support.shape[1] // layout.n_supp                                 # images per task
        own = rows.images(self.tasks * b)
        first, last = own.start // b, (own.stop - 1) // b + 1                 # the tasks this rank's images are in
        start, count = own.start - first * b, min(own.stop - own.start, b)   # its images' places in each

        def pick(x: torch.Tensor) -> torch.Tensor:   # (T, n_query * b, ...) -> this rank's queries of its tasks
            x = x[first:last].unflatten(1, (layout.n_query, b))
            return x[:, :, start:start + count].flatten(1, 2)

        flat = self._solved_logits(support[first:last], pick(queries), b).reshape(-1, b)

        def loss_of(batch_images: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(flat, batch_images % b, reduction="sum") / images.numel()

        return mixed_loss(loss_of, pick(images).reshape(-1), layout, 0)

    def logits(self, z: torch.Tensor, layout: TaskLayout) -> TaskLogits:
        """Each query against its own task's b classes."""
        logits, images = self.task_logits(z, layout)
        b = logits.shape[-1]
        return TaskLogits(logits.reshape(-1, b), images.reshape(-1) % b, torch.arange(b, device=z.device))
