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
    gbc     Pandy et al. 2022, "Transferability Estimation using Bhattacharyya Class
            Separability": -sum over ordered pairs of classes of the Bhattacharyya coefficient
            exp(-D_B) between per-class diagonal Gaussians on PCA-reduced features.
    sfda    Shao et al. 2022, "Not All Models Are Equal: Predicting Model Transferability in a
            Self-challenging Fisher Space": mean true-class posterior of a regularised Fisher
            discriminant refitted on ConfMix features, as the authors' code (TencentARC/SFDA).
    pactran Ding et al. 2022, "PACTran: PAC-Bayesian Metrics for Estimating the Transferability
            of Pretrained Models to Classification Tasks": PACTran-Gaussian, the PAC-Bayesian
            bound of an L2-regularised softmax head, as google-research/pactran_metrics; negated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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
    # False when LOGME_MAX_ITER steps ran out first: the evidence then lies just below its
    # supremum (each fixed-point step raises it), close enough to rank sources.
    converged: bool = True


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
        # A class whose alpha underflows (far fewer examples than features, labels the features
        # interpolate) turns its evidence into NaN on the way to a supremum at the boundary:
        # keep the last finite value, a lower bound that each fixed-point step only raised.
        evidence = torch.where(torch.isfinite(evidence), evidence, previous)
        # Judged on the evidence, not on alpha/beta: a class the features do not explain has its
        # supremum at alpha -> infinity (w = 0), which the evidence approaches while alpha runs off.
        if float((evidence - previous).abs().max()) < LOGME_TOL * n * LOGME_CHECK_EVERY:
            return Evidence(evidence / n, alpha, beta, iterations)
    # A supremum at a boundary (beta -> infinity with N <= D, alpha -> infinity for a class
    # the features do not explain) can be approached arbitrarily slowly; the evidence reached
    # is a tight lower bound of it, not an error.
    return Evidence(evidence / n, alpha, beta, LOGME_MAX_ITER, converged=False)


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
    """v^T M^+ v for each row v of ``rows``, M symmetric positive semi-definite."""
    return (rows * psd_solve(matrix, rows)).sum(1)


def psd_solve(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ M^+`` (each row v mapped to M^+ v), M symmetric positive semi-definite.

    A Cholesky solve when M is positive definite (shrinkage > 0 makes it so; several times
    cheaper than an eigendecomposition at D ~ 1000), the eigenvalue pseudo-inverse otherwise.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return torch.cholesky_solve(rows.T, factor).T
    evals, evecs = torch.linalg.eigh(matrix)
    keep = evals > evals.max() * PINV_RTOL
    return (rows @ evecs[:, keep]) / evals[keep] @ evecs[:, keep].T


# ------------------------------------------------------------------------------------ per-class checks


def check_examples_per_class(labels: torch.Tensor, minimum: int, estimator: str) -> None:
    """Raise ``UserError`` naming the first class with fewer than ``minimum`` examples."""
    classes, counts = labels.unique(return_counts=True)
    short = counts < minimum
    if bool(short.any()):
        first = int(short.nonzero()[0])
        raise UserError(
            f"{estimator} needs at least {minimum} examples of every class; class {int(classes[first])} has {int(counts[first])}"
        )


def _class_index(labels: torch.Tensor) -> torch.Tensor:
    """Each example's class as 0..C-1, in increasing label order (the columns of ``_one_hot``)."""
    return labels.unique(return_inverse=True)[1]


def class_means(features: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """(C, D) mean of each class's examples, classes in ``onehot``'s column order."""
    return onehot.T @ features / onehot.sum(0)[:, None]


# ------------------------------------------------------------------------------------ GBC

GBC_GAUSSIANS = ("diagonal", "spherical")
# The reference floors every per-class variance here, so that a feature constant within a class
# (ReLU zeros, a PCA direction beyond the data's rank) does not make D_B infinite.
GBC_VARIANCE_FLOOR = 1e-4


def principal_components(features: torch.Tensor, dims: int) -> torch.Tensor:
    """Coordinates of the centered features on their top ``dims`` principal axes (N, K), K =
    min(dims, N, D) as scikit-learn's PCA allows. Exact, from the eigendecomposition of the
    smaller of the Gram and scatter matrices (an N x D SVD costs several times more), so the
    result is deterministic up to the sign of each axis."""
    centered = features - features.mean(0, keepdim=True)
    n, d = centered.shape
    k = min(dims, n, d)
    if n <= d:
        evals, evecs = torch.linalg.eigh(centered @ centered.T)
        top = evals.flip(0)[:k].clamp_min(0).sqrt()
        return evecs.flip(1)[:, :k] * top
    _, evecs = torch.linalg.eigh(centered.T @ centered)
    return centered @ evecs.flip(1)[:, :k]


def bhattacharyya_distances(means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """(C, C) Bhattacharyya distances between diagonal Gaussians N(means[c], diag(variances[c])):
    1/8 (mu1 - mu2)^T S^-1 (mu1 - mu2) + 1/2 log(det S / sqrt(det S1 det S2)), S = (S1 + S2) / 2."""
    log_var = torch.log(variances)
    rows = []
    for c in range(means.shape[0]):  # one class against all at a time: O(C x K) memory
        average = (variances[c] + variances) / 2
        mahalanobis = ((means[c] - means) ** 2 / average).sum(1) / 8
        log_dets = torch.log(average).sum(1) - (log_var[c].sum() + log_var.sum(1)) / 2
        rows.append(mahalanobis + log_dets / 2)
    return torch.stack(rows)


def gbc(
    features: torch.Tensor, labels: torch.Tensor, pca_dim: int = 64, gaussian: str = "diagonal"
) -> float:
    """GBC: -sum_{i != j} exp(-D_B(c_i, c_j)) over per-class Gaussians on the features projected
    onto their top ``pca_dim`` principal axes (``0``: the features as they are).

    ``gaussian="diagonal"`` (the paper's recommendation) estimates one variance per dimension
    and class; ``"spherical"`` one per class, their mean, with the determinant taken over all K
    dimensions as the Bhattacharyya distance defines it.
    """
    features, labels = check_features(features, labels)
    if gaussian not in GBC_GAUSSIANS:
        raise UserError(
            f"GBC: gaussian must be one of {', '.join(GBC_GAUSSIANS)}, got {gaussian!r}"
        )
    if pca_dim < 0:
        raise UserError(f"GBC: pca_dim must be >= 0 (0 = no PCA), got {pca_dim}")
    check_examples_per_class(labels, 2, "GBC")
    reduced = principal_components(features, pca_dim) if pca_dim else features
    onehot = _one_hot(labels)
    means = class_means(reduced, onehot)
    deviations = reduced - means[_class_index(labels)]
    variances = class_means(deviations**2, onehot).clamp_min(GBC_VARIANCE_FLOOR)
    if gaussian == "spherical":
        variances = variances.mean(1, keepdim=True).expand_as(variances)
    coefficients = torch.exp(-bhattacharyya_distances(means, variances))
    return -float(coefficients.sum() - coefficients.diagonal().sum())


# ------------------------------------------------------------------------------------ SFDA

# The reference's adaptive regularisation: lambda = exp(-SFDA_DECAY x largest eigenvalue of S_w),
# the eigenvalue estimated by SFDA_POWER_ITERATIONS rounds of two power steps, floored.
SFDA_DECAY = 5.0
SFDA_POWER_ITERATIONS = 3
SFDA_MIN_SHRINKAGE = 1e-10


def largest_eigenvalue_estimate(matrix: torch.Tensor) -> float:
    """The SFDA reference's power iteration for the largest eigenvalue of a PSD matrix, started
    from its row sums; the exact eigenvalue when that start is orthogonal to its range."""
    x = matrix.sum(1)
    if float(x.norm()) == 0:
        return float(torch.linalg.eigvalsh(matrix)[-1])
    for _ in range(SFDA_POWER_ITERATIONS):
        y = matrix @ x
        y = y / y.norm()
        x = matrix @ y
        x = x / x.norm()
    return float(x @ matrix @ y)


def sfda_shrinkage(within: torch.Tensor) -> float:
    return max(math.exp(-SFDA_DECAY * largest_eigenvalue_estimate(within)), SFDA_MIN_SHRINKAGE)


def class_scatter(
    features: torch.Tensor, onehot: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the within-class scatter sum_c prior_c cov_c (D, D), covariances
    with 1/n_c (so the sum is the mean outer product of deviations from the own class mean)."""
    means = class_means(features, onehot)
    deviations = features - means[index]
    return means, deviations.T @ deviations / features.shape[0]


def fisher_posteriors(
    features: torch.Tensor,
    onehot: torch.Tensor,
    index: torch.Tensor,
    shrinkage: float | None,
) -> tuple[torch.Tensor, float]:
    """Class posteriors (N, C) of the reference's regularised Fisher discriminant fitted and
    evaluated on ``features``, and the shrinkage it used (``None``: the adaptive formula).

    The reference projects onto all D generalised eigenvectors V of (S_b, S_w') and scores
    x V V^T mu_c; since V^T S_w' V = I, V V^T = S_w'^-1, so one solve with the shrunk
    within-class scatter S_w' = (1 - lambda) S_w + lambda tr(S_w)/D I gives the same posteriors.
    """
    means, within = class_scatter(features, onehot, index)
    d = features.shape[1]
    trace = float(torch.trace(within))
    if trace == 0:
        raise UserError(
            "SFDA: every example equals its class mean (no within-class scatter to regularise)"
        )
    lam = sfda_shrinkage(within) if shrinkage is None else shrinkage
    shrunk = (1 - lam) * within + lam * trace / d * torch.eye(d, dtype=within.dtype)
    coef = psd_solve(shrunk, means)  # (C, D): S_w'^-1 mu_c
    priors = onehot.mean(0)
    logits = features @ coef.T - 0.5 * (means * coef).sum(1) + torch.log(priors)
    return torch.softmax(logits, dim=1), lam


def sfda(features: torch.Tensor, labels: torch.Tensor, shrinkage: float | None = None) -> float:
    """SFDA: mean true-class posterior of the Fisher discriminant refitted on ConfMix features.

    ConfMix (the self-challenge) moves each example toward the mean of the *other* classes' means
    by one minus its softened (softmax of the posteriors) true-class posterior from a first fit;
    the second fit keeps the first's shrinkage. As in the reference, the score averages the
    probabilities, not their logs ("the log function is ignored in case of instability").
    """
    features, labels = check_features(features, labels)
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise UserError(f"SFDA: shrinkage must be in [0, 1], got {shrinkage}")
    onehot, index = _one_hot(labels), _class_index(labels)
    rows = torch.arange(features.shape[0])
    posteriors, lam = fisher_posteriors(features, onehot, index, shrinkage)
    confidence = torch.softmax(posteriors, dim=1)[rows, index][:, None]
    means = class_means(features, onehot)
    other_means = (means.sum(0, keepdim=True) - means) / (means.shape[0] - 1)
    mixed = confidence * features + (1 - confidence) * other_means[index]
    posteriors, _ = fisher_posteriors(mixed, onehot, index, lam)
    return float(posteriors[rows, index].mean())


# ------------------------------------------------------------------------------------ PACTran

PACTRAN_TINY = 1e-10  # the reference adds it to the mean curvature before the log


def pactran(
    features: torch.Tensor,
    labels: torch.Tensor,
    lambda_factor: float = 1.0,
    prior_variance_factor: float = 100.0,
    max_iter: int = 100,
    tolerance: float = 1e-6,
) -> float:
    """Negated PACTran-Gaussian: -(L(theta*) + K D / (2 lambda N) sigma0^2 log(sigma^-2)).

    theta* = (W, b) minimises L = mean cross-entropy + |W|^2 / (2 lambda N) of a softmax head
    on the centered features (L-BFGS-B, at most ``max_iter`` iterations, ftol = gtol =
    ``tolerance``, as the reference's scipy call); sigma0^2 = prior_variance_factor / D is the
    prior variance of the weights; sigma^-2 = lambda N / (K D) x the sum of the diagonal Hessian
    over all K (D + 1) parameters: sum_i x_i^2 p_i (1 - p_i) + 1/(lambda N) for the weights
    (the data term summed, not averaged, over examples, as in the reference) and
    sum_i p_i (1 - p_i) for the biases.
    """
    features, labels = check_features(features, labels)
    for name, value in (
        ("lambda_factor", lambda_factor),
        ("prior_variance_factor", prior_variance_factor),
        ("tolerance", tolerance),
    ):
        if not value > 0:
            raise UserError(f"PACTran: {name} must be > 0, got {value}")
    if max_iter < 1:
        raise UserError(f"PACTran: max_iter must be >= 1, got {max_iter}")
    x = features - features.mean(0, keepdim=True)
    index = _class_index(labels)
    n, d = x.shape
    k = int(index.max()) + 1
    ldas2 = lambda_factor * n
    weight, bias = fit_softmax_head(x, index, k, ldas2, max_iter, tolerance)
    logits = x @ weight + bias
    loss = torch.nn.functional.cross_entropy(logits, index) + 0.5 * (weight**2).sum() / ldas2
    probs = torch.softmax(logits, dim=1)
    curvature = probs - probs**2
    hessian_sum = ((x**2).T @ curvature).sum() + d * k / ldas2 + curvature.sum()
    if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(hessian_sum))):
        raise UserError("PACTran: the softmax head's optimisation diverged (non-finite loss)")
    sigma2_inv = float(hessian_sum) * ldas2 / (d * k) + PACTRAN_TINY
    prior_variance = prior_variance_factor / d
    bound = float(loss) + 0.5 * d * k / ldas2 * prior_variance * math.log(sigma2_inv)
    return -bound


def fit_softmax_head(
    x: torch.Tensor, index: torch.Tensor, k: int, ldas2: float, max_iter: int, tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + |W|^2 / (2 ldas2) over (W, b), the bias unpenalised, from
    zero with scipy's L-BFGS-B: the optimiser, memory and stopping rules the reference runs.

    Loss and gradient are computed in torch. torch.optim.LBFGS would do as well, but a process's
    first torch optimizer imports torch._dynamo, 2-7 s on this project's CPUs, which would land
    in PACTran's timing whenever the estimators run before any training.
    """
    import scipy.optimize  # only PACTran needs it; ~1 s to import

    n, d = x.shape
    onehot = torch.nn.functional.one_hot(index, k).to(x.dtype)

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        params = torch.from_numpy(theta).view(d + 1, k)
        weight, bias = params[:d], params[d]
        log_probs = torch.log_softmax(x @ weight + bias, dim=1)
        loss = -(log_probs * onehot).sum() / n + 0.5 * (weight**2).sum() / ldas2
        residual = (log_probs.exp() - onehot) / n
        gradient = torch.cat([x.T @ residual + weight / ldas2, residual.sum(0, keepdim=True)])
        return float(loss), gradient.numpy().ravel()

    result = scipy.optimize.minimize(
        loss_and_gradient,
        np.zeros((d + 1) * k),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "ftol": tolerance, "gtol": tolerance},
    )
    params = torch.from_numpy(result.x.copy()).view(d + 1, k)
    return params[:d], params[d]


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


@dataclass(frozen=True)
class GBC:
    pca_dim: int = 64
    gaussian: str = "diagonal"
    needs_source_head = False

    def score(self, features, labels, source_logits=None) -> float:
        return gbc(features, labels, self.pca_dim, self.gaussian)


@dataclass(frozen=True)
class SFDA:
    shrinkage: float | None = None
    needs_source_head = False

    def score(self, features, labels, source_logits=None) -> float:
        return sfda(features, labels, self.shrinkage)


@dataclass(frozen=True)
class PACTran:
    lambda_factor: float = 1.0
    prior_variance_factor: float = 100.0
    max_iter: int = 100
    needs_source_head = False

    def score(self, features, labels, source_logits=None) -> float:
        return pactran(
            features, labels, self.lambda_factor, self.prior_variance_factor, self.max_iter
        )


def make_gbc(options) -> GBC:
    return GBC(**{k: options[k] for k in ("pca_dim", "gaussian") if options.get(k) is not None})


def make_sfda(options) -> SFDA:
    return SFDA(shrinkage=options.get("shrinkage"))


def make_pactran(options) -> PACTran:
    names = ("lambda_factor", "prior_variance_factor", "max_iter")
    return PACTran(**{k: options[k] for k in names if options.get(k) is not None})
