"""L2-regularised multinomial logistic regression on fixed features, fit in torch.

The protocol is Kornblith et al. 2019 / CLIP (App. A.3): standardise with the fitting set's
statistics, choose the regularisation strength on a validation split with a coarse log grid and
then interval halving around the best value, refit on train+val with the chosen strength.
Each fit is full-batch L-BFGS warm-started from the neighbouring strength's solution
(``google-research/linear_eval`` does the same), which is what makes the sweep cheap.

Strength ``l2`` multiplies ``0.5 * ||W||^2`` added to the *mean* cross-entropy, so scikit-learn's
``C`` equals ``1 / (l2 * n_samples)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tlbench.engine.runtime import resolve_device

DEFAULT_L2_GRID = tuple(10.0**e for e in range(-6, 3))  # 1e-6 .. 1e2
DEFAULT_REFINE_STEPS = 3
# Every fit is solved to the optimum, not to "good enough": in float64, until the largest
# gradient entry of the mean loss is below DEFAULT_TOL (or float64 can make no more progress).
# scikit-learn's defaults (1e-4, 100 iterations; CLIP raises the cap to 1000) stop small-l2 fits
# while the loss is still 10-20x above its optimum, which made the chosen strength depend on the
# machine's float rounding (docs/strategies.md, "Linear probe").
DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 1000
# Stop when an iteration changes the loss by less than this: float64 can resolve no more.
_CHANGE_TOL = 1e-12
# L-BFGS iterations between two checks of the stopping rule.
_LEG = 20


@dataclass(frozen=True)
class LinearHead:
    """A fitted classifier acting on *raw* features (standardisation folded into the weights)."""

    weight: torch.Tensor  # (num_classes, dim)
    bias: torch.Tensor  # (num_classes,)
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight) @ self.weight.T + self.bias

    def top1(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(self.logits(features), labels)


@dataclass(frozen=True)
class LogisticSearch:
    head: LinearHead  # fitted on the search's training features with the best strength
    l2: float
    val_top1: float
    tried: list[dict] = field(default_factory=list)  # [{"l2": ..., "val_top1": ...}] in order tried


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()


# How features are scaled before fitting. "feature": each dimension to unit variance (the
# linear-probe protocol). "global": one scale for all dimensions (their mean standard deviation),
# so the L2 penalty acts on the head as it is applied to raw features: what LP-FT needs, see
# tlbench.builtin.strategies.LinearProbeThenFineTune.
SCALINGS = ("feature", "global")


def _standardiser(x: torch.Tensor, scaling: str = "feature") -> tuple[torch.Tensor, torch.Tensor]:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    if scaling == "global":
        std = std.mean().expand_as(std)
    return mean, std.clamp_min(1e-6)


def _lbfgs(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    init: torch.Tensor | None,
    max_iter: int,
    tol: float,
    scale: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Minimise mean CE + l2/2 ||W||^2 over W (dim+1, classes); the bias row is not penalised.

    ``scale`` (dim+1, 1) preconditions: L-BFGS moves ``V = W / scale``, the same problem in
    rescaled coordinates. It stops when the largest gradient entry with respect to the weights
    in the original feature space (``axes @ W`` when ``z`` holds coordinates on ``axes``) is at
    most ``tol``, when float64 can make no more progress, or after ``max_iter`` iterations."""
    ones = torch.ones(z.shape[1] + 1, 1, device=z.device, dtype=z.dtype)
    scale = ones if scale is None else scale
    start = (
        init
        if init is not None
        else torch.zeros(z.shape[1] + 1, num_classes, device=z.device, dtype=z.dtype)
    )
    v = (start / scale).requires_grad_(True)
    # L-BFGS's own test bounds V's gradient, which is W's times ``scale``; the bound that matters
    # is on W's. So it runs in short legs (its history carries over) until W's holds.
    opt = torch.optim.LBFGS(
        [v],
        lr=1.0,
        max_iter=_LEG,
        max_eval=10 * _LEG,  # generous: a leg must end on its iteration count or on no progress
        history_size=20,
        tolerance_grad=0.0,
        tolerance_change=_CHANGE_TOL if z.dtype == torch.float64 else tol * 1e-3,
        line_search_fn="strong_wolfe",
    )

    rows = torch.arange(len(y), device=y.device)

    @torch.no_grad()
    def closure():
        # The loss and its gradient written out: autograd's backward multiplies by ``z``'s
        # transpose in a layout BLAS runs 3x slower, and this is the whole cost of a fit.
        w = v * scale
        logits = w[:-1].T @ z.T + w[-1][:, None]  # (classes, n)
        log_norm = logits.logsumexp(0)
        loss = (log_norm - logits[y, rows]).mean() + 0.5 * l2 * w[:-1].pow(2).sum()
        residual = (logits - log_norm).exp_()  # softmax probabilities, then minus the one-hot
        residual[y, rows] -= 1.0
        residual /= len(y)
        grad = torch.cat([(residual @ z).T + l2 * w[:-1], residual.sum(1)[None]])
        v.grad = grad * scale
        return loss

    def largest_gradient() -> float:
        closure()
        grad = v.grad / scale  # with respect to W
        weights = grad[:-1] if axes is None else axes @ grad[:-1]
        return max(weights.abs().max().item(), grad[-1].abs().max().item())

    done = 0
    while done < max_iter and largest_gradient() > tol:
        before = opt.state[v].get("n_iter", 0)
        opt.step(closure)
        advanced = opt.state[v].get("n_iter", 0) - before
        done += max(advanced, 1)
        if advanced < _LEG:  # the loss stopped changing: float64 can resolve no more
            break
    return (v * scale).detach()


def solver_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device has it (Apple's MPS does not): float32 cannot resolve the
    last digits of the loss that separate a converged small-l2 fit from an unconverged one."""
    return torch.float32 if device.type == "mps" else torch.float64


# Fits run on the features' principal axes, each rescaled by the inverse square root of its
# curvature (CURVATURE * variance + l2, the Hessian's diagonal for probabilities that are not yet
# confident). Without it L-BFGS hit its iteration cap at l2 = 1e-2 and 1e-3 on lite0 features of
# fashion-mnist, with gradients 10x above the tolerance; with it every strength of the grid
# converges, in fewer iterations (docs/strategies.md, "Linear probe").
CURVATURE = 0.5
# A principal axis of singular value s over n examples can contribute at most sqrt(2) * s /
# sqrt(n) to any gradient entry: axes below tol / 2 on that scale are dropped, and the gradient
# they would carry stays within the stopping tolerance. Raw pixels of upscaled images span far
# fewer axes than they have entries (digits at 32 px: ~840 of 3072).


# Fitting sets up to this many float64 bytes are standardised and decomposed whole (an SVD);
# larger ones by chunks (``_Problem._axes_by_chunks``), so the solver's memory stays near one
# float64 copy of the coordinates instead of four copies of the features.
DIRECT_MAX_BYTES = 256 << 20
SOLVER_CHUNK = 4096


class _Problem:
    """One standardised fitting set on the device, with warm starts kept per strength.

    Fits are solved in the basis of the set's principal axes (``z = U S V^T``): the loss and
    penalty are the same there (``V`` is orthonormal and the optimum lies in its span), there are
    at most ``min(n, dim)`` coordinates, and each can be preconditioned by its own curvature.
    ``solutions`` holds every fit's weights in the standardised feature space."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        device: torch.device,
        max_iter: int,
        tol: float,
        scaling: str = "feature",
    ):
        dtype = solver_dtype(device)
        self.n = len(x)
        self.y = y.to(device)
        self.num_classes = num_classes
        self.max_iter, self.tol = max_iter, tol
        if self.n * x.shape[1] * 8 <= DIRECT_MAX_BYTES:
            x = x.to(device, dtype)
            self.mean, self.std = _standardiser(x, scaling)
            z = (x - self.mean) / self.std
            del x
            _, singular, vh = torch.linalg.svd(z, full_matrices=False)
            keep = singular / math.sqrt(max(self.n, 1)) > tol / 2
            self.axes = vh[keep].T  # (dim, rank); rank 0 when every feature is constant
            self.coords = z @ self.axes  # (n, rank): the features on their principal axes
        else:
            singular, keep = self._axes_by_chunks(x, device, dtype, scaling)
        self.curvature = CURVATURE * singular[keep].pow(2) / max(self.n, 1)
        self.solutions: dict[float, torch.Tensor] = {}
        self._reduced: dict[float, torch.Tensor] = {}

    def _axes_by_chunks(self, x: torch.Tensor, device, dtype, scaling: str):
        """The same axes and coordinates for a set too large to copy whole in float64: statistics
        and the Gram matrix accumulated chunk by chunk, the axes from its eigenvectors (singular
        values are the square roots of its eigenvalues), so the only full-size float64 array is
        ``coords`` (n x rank)."""

        def chunks():
            for start in range(0, self.n, SOLVER_CHUNK):
                yield x[start : start + SOLVER_CHUNK].to(device, dtype)

        total = sum(c.sum(0) for c in chunks())
        mean = total / self.n
        std = (sum((c - mean).pow(2).sum(0) for c in chunks()) / self.n).sqrt()
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        if scaling == "global":
            std = std.mean().expand_as(std)
        self.mean, self.std = mean, std.clamp_min(1e-6)
        gram = sum((z := (c - self.mean) / self.std).T @ z for c in chunks())
        eigenvalues, vectors = torch.linalg.eigh(gram)
        singular = eigenvalues.clamp_min(0).sqrt().flip(0)  # descending, as svd orders them
        vectors = vectors.flip(1)
        keep = singular / math.sqrt(max(self.n, 1)) > self.tol / 2
        self.axes = vectors[:, keep]
        # Filled in place: a list of chunks and their concatenation would hold it twice.
        self.coords = torch.empty(self.n, self.axes.shape[1], device=device, dtype=dtype)
        for start, chunk in zip(range(0, self.n, SOLVER_CHUNK), chunks(), strict=True):
            rows = self.coords[start : start + len(chunk)]
            torch.matmul((chunk - self.mean) / self.std, self.axes, out=rows)
        return singular, keep

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the solver sees it (standardised with the fitting set's statistics)."""
        return (x.to(self.mean) - self.mean) / self.std

    def fit(self, l2: float) -> LinearHead:
        nearest = min(self._reduced, key=lambda s: abs(math.log(s) - math.log(l2)), default=None)
        one = torch.ones(1, device=self.coords.device, dtype=self.coords.dtype)
        scale = torch.cat([(self.curvature + l2).rsqrt(), one])[:, None]
        u = _lbfgs(
            self.coords,
            self.y,
            self.num_classes,
            l2,
            self._reduced.get(nearest),
            self.max_iter,
            self.tol,
            scale,
            self.axes,
        )
        self._reduced[l2] = u
        w = torch.cat([self.axes @ u[:-1], u[-1:]])
        self.solutions[l2] = w
        weight = (w[:-1] / self.std[:, None]).T
        bias = w[-1] - weight @ self.mean
        return LinearHead(weight.contiguous(), bias, l2)


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float,
    device: str | torch.device | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    scaling: str = "feature",
) -> LinearHead:
    """Fit one L2-regularised multinomial logistic regression on standardised features
    (``scaling``: per dimension, or one scale for all, see ``SCALINGS``)."""
    device = resolve_device(device)
    return _Problem(features, labels, num_classes, device, max_iter, tol, scaling).fit(l2)


def search_logistic(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    grid: tuple[float, ...] = DEFAULT_L2_GRID,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    device: str | torch.device | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    scaling: str = "feature",
) -> LogisticSearch:
    """Choose the strength on ``val``: the grid from strong to weak (warm starts follow the
    regularisation path), then ``refine_steps`` rounds of interval halving in log space.
    Ties go to the stronger regularisation."""
    device = resolve_device(device)
    problem = _Problem(*train, num_classes, device, max_iter, tol, scaling)
    val_x, val_y = val[0].to(device), val[1]
    scores: dict[float, tuple[float, LinearHead]] = {}

    def score(l2: float) -> float:
        if l2 not in scores:
            head = problem.fit(l2)
            scores[l2] = (head.top1(val_x, val_y), head)
        return scores[l2][0]

    def best() -> float:
        return max(scores, key=lambda s: (scores[s][0], s))

    for l2 in sorted(grid, reverse=True):
        score(l2)
    log_grid = sorted(math.log10(s) for s in grid)
    half_width = (log_grid[-1] - log_grid[0]) / max(len(log_grid) - 1, 1)
    for _ in range(refine_steps if len(grid) > 1 else 0):
        centre = math.log10(best())
        half_width /= 2
        for candidate in (centre - half_width, centre + half_width):
            score(10.0**candidate)
    chosen = best()
    tried = [{"l2": float(s), "val_top1": round(v, 3)} for s, (v, _) in scores.items()]
    return LogisticSearch(
        head=scores[chosen][1], l2=chosen, val_top1=scores[chosen][0], tried=tried
    )
