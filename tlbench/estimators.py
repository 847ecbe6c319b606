"""Transferability estimators: score a source model for a target task without fine-tuning it.

Each estimator reads what a frozen source model produces on the target's training split:
penultimate ``features`` (N, D) and the target ``labels`` (N,), and for LEEP and NCE the source
model's ``source_logits`` (N, Z) over its own Z source classes. Higher scores predict better
transfer; scores are only comparable between source models on the same target data.

The math runs in torch, in float64: LogME's evidence and H-score's covariance inverse lose
digits in float32 once D reaches the ~1000 features of an ImageNet backbone.

    logme   You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
            Learning": Bayesian linear regression evidence per class, maximised over (alpha,
            beta) by MacKay's fixed point on the SVD of the features; mean over classes / N.
    leep    Nguyen et al. 2020, "LEEP": log expected empirical prediction through the
            empirical conditional P(y | z) of target labels given the source classes.
    nce     Tran et al. 2019, "Transferability and Hardness of Supervised Classification
            Tasks": -H(Y | Z), Z the source model's hard (argmax) labels.
    hscore  Bao et al. 2019, "An Information-Theoretic Approach to Transferability":
            tr(cov(f)^-1 cov(E[f | y])); with Ledoit-Wolf shrinkage by default (the
            regularised H-score of Ibrahim et al. 2022, as TLlib implements it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tlbench.errors import UserError

# LogME's fixed point typically converges in 2-3 steps (You et al.). When the evidence is flat
# along one direction or its supremum lies at a boundary (beta -> infinity: N <= D features that
# interpolate the labels; alpha -> infinity: a class the features do not explain), it creeps
# toward the optimum geometrically; steps cost O(k x C), so a few thousand are cheap. The
# tolerance is on the evidence per example, far below the differences that rank source models.
LOGME_MAX_ITER = 10_000
LOGME_TOL = 1e-9
LOGME_CHECK_EVERY = 5  # the logs of the evidence cost more than a step
# Eigenvalues below this fraction of the largest are treated as zero by the pseudo-inverse
# (numpy's pinv default is 1e-15; features from a real backbone need a looser cut).
PINV_RTOL = 1e-10


# ------------------------------------------------------------------------------------ checks


def check_features(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (features, labels) and return them as float64 (N, D) and int64 (N,) on CPU.

    Raises ``UserError`` with a message naming the problem: shape mismatch, non-finite or
    constant features, fewer than two classes.
    """
    if features.ndim != 2:
        raise UserError(
            f"features must be a 2-d (examples, dims) tensor, got shape {tuple(features.shape)}"
        )
    labels = check_labels(labels, features.shape[0])
    features = features.detach().to("cpu", torch.float64)
    bad_rows = int((~torch.isfinite(features)).any(dim=1).sum())
    if bad_rows:
        raise UserError(
            f"features contain NaN or infinite values in {bad_rows} of {features.shape[0]} examples; the backbone's outputs are not usable"
        )
    if bool((features == features[:1]).all()):
        raise UserError(
            "features are identical for every example (constant features carry no information about the labels)"
        )
    return features, labels


def check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = labels.detach().to("cpu", torch.int64).reshape(-1)
    if labels.numel() != n:
        raise UserError(f"got {labels.numel()} labels for {n} examples")
    if labels.numel() and int(labels.min()) < 0:
        raise UserError(f"labels must be non-negative class indices, got {int(labels.min())}")
    if labels.unique().numel() < 2:
        raise UserError(
            "the labels hold fewer than two classes; transferability needs at least two"
        )
    return labels


def check_logits(
    source_logits: torch.Tensor | None, labels: torch.Tensor, estimator: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate source logits (N, Z) and labels (N,); return them as float64 and int64 on CPU."""
    if source_logits is None:
        raise UserError(
            f"{estimator} needs the source model's predictions over its source classes, and none were given (the model has no source classifier)"
        )
    if source_logits.ndim != 2:
        raise UserError(
            f"{estimator}: source logits must be (examples, source classes), got shape {tuple(source_logits.shape)}"
        )
    labels = check_labels(labels, source_logits.shape[0])
    logits = source_logits.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(logits).all()):
        raise UserError(f"{estimator}: the source logits contain NaN or infinite values")
    return logits, labels


def _one_hot(labels: torch.Tensor) -> torch.Tensor:
    """(N, C) float64 indicator of the classes present, in increasing label order."""
    _, index = labels.unique(return_inverse=True)
    return torch.nn.functional.one_hot(index).to(torch.float64)


# ------------------------------------------------------------------------------------ LogME


@dataclass(frozen=True)
class Evidence:
    """LogME's per-class fixed point: log evidence / N, and the maximising alpha, beta."""

    evidence: torch.Tensor  # (C,)
    alpha: torch.Tensor
    beta: torch.Tensor
    iterations: int


def log_evidence(
    sigma: torch.Tensor,
    x2: torch.Tensor,
    rest: torch.Tensor,
    n: int,
    d: int,
    alpha: torch.Tensor,
    beta: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Log evidence of y ~ N(F w, 1/beta), w ~ N(0, 1/alpha) in the SVD basis of F.

    ``sigma`` (k,) are the non-zero eigenvalues of F^T F, ``x2`` (k, C) the squared projections
    of each target column on the left singular vectors, ``rest`` (C,) the part of |y|^2 outside
    them. Returns (evidence, gamma, |m|^2, |y - F m|^2), each (C,).
    """
    gamma, m2, res2 = _moments(sigma, x2, rest, alpha / beta)
    k = sigma.numel()
    # The d - k zero eigenvalues of F^T F contribute log(alpha) each to log|A|.
    log_det = torch.log(alpha + beta * sigma[:, None]).sum(0) + (d - k) * torch.log(alpha)
    evidence = (
        d / 2 * torch.log(alpha)
        + n / 2 * torch.log(beta)
        - log_det / 2
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence, gamma, m2, res2


def _moments(
    sigma: torch.Tensor, x2: torch.Tensor, rest: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """gamma (effective number of parameters), |m|^2 and |y - F m|^2 for t = alpha / beta."""
    shrink = sigma[:, None] / (sigma[:, None] + t)  # (k, C)
    gamma = shrink.sum(0)
    m2 = (x2 * shrink**2 / sigma[:, None]).sum(0)
    res2 = (x2 * (1 - shrink) ** 2).sum(0) + rest
    return gamma, m2, res2


def left_spectrum(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors (N, k) and non-zero eigenvalues (k,) of F^T F, from the
    eigendecomposition of the smaller Gram matrix (as the LogME reference code does): an
    (N x D) SVD costs several times more and float64 keeps the squared spectrum accurate
    enough for the evidence."""
    n, d = features.shape
    gram = features @ features.T if n <= d else features.T @ features
    sigma, vectors = torch.linalg.eigh(gram)
    keep = sigma > sigma.max() * torch.finfo(torch.float64).eps * max(n, d)
    sigma, vectors = sigma[keep], vectors[:, keep]
    u = vectors if n <= d else features @ vectors / sigma.sqrt()
    return u, sigma


def logme_evidence(features: torch.Tensor, targets: torch.Tensor) -> Evidence:
    """Maximise the evidence of each column of ``targets`` (N, C) over (alpha, beta) by
    MacKay's fixed point (alpha = gamma / |m|^2, beta = (N - gamma) / |y - F m|^2), all
    columns at once."""
    n, d = features.shape
    u, sigma = left_spectrum(features)
    x = u.T @ targets
    x2 = x**2
    rest = ((targets**2).sum(0) - x2.sum(0)).clamp_min(0)
    alpha = torch.ones(targets.shape[1], dtype=torch.float64)
    beta = torch.ones_like(alpha)
    tiny = torch.finfo(torch.float64).tiny
    evidence, gamma, m2, res2 = log_evidence(sigma, x2, rest, n, d, alpha, beta)
    for iterations in range(1, LOGME_MAX_ITER + 1):
        alpha = gamma / m2.clamp_min(tiny)
        beta = (n - gamma) / res2.clamp_min(tiny)
        if not (bool(torch.isfinite(alpha).all()) and bool(torch.isfinite(beta).all())):
            raise UserError(
                "LogME diverged (alpha or beta became infinite): the labels are exactly orthogonal to, or exactly reproduced by, the features"
            )
        if iterations % LOGME_CHECK_EVERY:
            gamma, m2, res2 = _moments(sigma, x2, rest, alpha / beta)
            continue
        previous = evidence
        evidence, gamma, m2, res2 = log_evidence(sigma, x2, rest, n, d, alpha, beta)
        # Judged on the evidence, not on alpha/beta: a class the features do not explain has its
        # supremum at alpha -> infinity (w = 0), which the evidence approaches while alpha runs off.
        if float((evidence - previous).abs().max()) < LOGME_TOL * n * LOGME_CHECK_EVERY:
            return Evidence(evidence / n, alpha, beta, iterations)
    raise UserError(f"LogME's fixed point did not converge in {LOGME_MAX_ITER} iterations")


def logme(features: torch.Tensor, labels: torch.Tensor) -> float:
    """LogME score: mean over classes of the maximised log evidence per example."""
    features, labels = check_features(features, labels)
    return float(logme_evidence(features, _one_hot(labels)).evidence.mean())


# ------------------------------------------------------------------------------------ LEEP, NCE


def leep(source_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP: (1/N) sum_i log sum_z P(y_i | z) theta_z(x_i), with the empirical joint
    P(y, z) = (1/N) sum_i theta_z(x_i) [y_i = y] built from the source softmax theta."""
    logits, labels = check_logits(source_logits, labels, "LEEP")
    probs = torch.softmax(logits, dim=1)
    onehot = _one_hot(labels)
    joint = onehot.T @ probs / labels.numel()  # (C, Z)
    marginal = joint.sum(0, keepdim=True)
    # A source class no example puts mass on cannot be reached by the sum below either.
    conditional = joint / marginal.clamp_min(torch.finfo(torch.float64).tiny)
    expected = probs @ conditional.T  # (N, C): the expected empirical prediction of each class
    return float(torch.log((expected * onehot).sum(1)).mean())


def nce(source_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """NCE: -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z), Z the source model's argmax labels."""
    logits, labels = check_logits(source_logits, labels, "NCE")
    hard = logits.argmax(1)
    onehot = _one_hot(labels)
    joint = onehot.T @ _one_hot(hard) / labels.numel()  # (C, Z') over source classes seen
    conditional = joint / joint.sum(0, keepdim=True)
    present = joint > 0  # 0 log 0 = 0
    return float((joint[present] * torch.log(conditional[present])).sum())


# ------------------------------------------------------------------------------------ H-score


def ledoit_wolf_shrinkage(centered: torch.Tensor) -> float:
    """Ledoit & Wolf (2004) optimal shrinkage intensity toward mu*I for centered data (the
    estimate scikit-learn's ``ledoit_wolf_shrinkage`` computes)."""
    n, d = centered.shape
    cov = centered.T @ centered / n
    mu = torch.trace(cov) / d
    delta = ((cov - mu * torch.eye(d, dtype=cov.dtype)) ** 2).sum() / d
    squares = centered**2
    beta = ((squares.T @ squares).sum() / n - (cov**2).sum()) / (d * n)
    beta = torch.minimum(beta, delta)
    return 0.0 if float(delta) == 0 else float(beta / delta)


def hscore(features: torch.Tensor, labels: torch.Tensor, shrinkage: float | None = None) -> float:
    """H-score tr(cov(f)^-1 cov(E[f | y])), both covariances with 1/N.

    ``shrinkage=None`` shrinks cov(f) toward a scaled identity by the Ledoit-Wolf estimate and
    scales cov(E[f|y]) by (1 - shrinkage), as the regularised H-score does; ``0`` uses the plain
    pseudo-inverse, which overfits when N is not much larger than D.
    """
    features, labels = check_features(features, labels)
    n, d = features.shape
    centered = features - features.mean(0, keepdim=True)
    lam = ledoit_wolf_shrinkage(centered) if shrinkage is None else float(shrinkage)
    cov = centered.T @ centered / n
    shrunk = (1 - lam) * cov + lam * (torch.trace(cov) / d) * torch.eye(d, dtype=cov.dtype)
    onehot = _one_hot(labels)
    counts = onehot.sum(0)
    means = (onehot.T @ centered) / counts[:, None]  # (C, D) centered class means
    # cov(E[f|y]) = sum_c (n_c / n) mu_c mu_c^T, so the trace needs only Sigma^+ applied to C means.
    quad = inverse_quadratic_forms(shrunk, means)
    return float((1 - lam) * (counts / n * quad).sum())


def inverse_quadratic_forms(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """v^T M^+ v for each row v of ``rows``, M symmetric positive semi-definite.

    A Cholesky solve when M is positive definite (shrinkage > 0 makes it so; several times
    cheaper than an eigendecomposition at D ~ 1000), the eigenvalue pseudo-inverse otherwise.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        solved = torch.cholesky_solve(rows.T, factor)
        return (rows * solved.T).sum(1)
    evals, evecs = torch.linalg.eigh(matrix)
    keep = evals > evals.max() * PINV_RTOL
    projected = rows @ evecs[:, keep]
    return (projected**2 / evals[keep]).sum(1)


# ------------------------------------------------------------------------------------ plugin objects


@dataclass(frozen=True)
class LogME:
    needs_source_head = False

    def score(self, features, labels, source_logits=None) -> float:
        return logme(features, labels)


@dataclass(frozen=True)
class LEEP:
    needs_source_head = True

    def score(self, features, labels, source_logits=None) -> float:
        return leep(source_logits, labels)


@dataclass(frozen=True)
class NCE:
    needs_source_head = True

    def score(self, features, labels, source_logits=None) -> float:
        return nce(source_logits, labels)


@dataclass(frozen=True)
class HScore:
    shrinkage: float | None = None
    needs_source_head = False

    def score(self, features, labels, source_logits=None) -> float:
        return hscore(features, labels, self.shrinkage)


def make_logme(options) -> LogME:
    return LogME()


def make_leep(options) -> LEEP:
    return LEEP()


def make_nce(options) -> NCE:
    return NCE()


def make_hscore(options) -> HScore:
    return HScore(shrinkage=options.get("shrinkage"))
