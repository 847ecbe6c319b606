"""Each estimator against an independent computation of its definition, a sanity property on
real data, and clear messages for inputs it cannot score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.special
import torch
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from tlbench import estimators as est
from tlbench.errors import UserError


def explicit_log_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta): Bayesian linear regression with w ~ N(0, I/alpha)
    and noise precision beta, marginalised with explicit N x N matrices."""
    n = len(y)
    cov = features @ features.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * y @ np.linalg.solve(cov, y) - 0.5 * logdet - n / 2 * np.log(2 * np.pi))


def grid_max_log_evidence(features: np.ndarray, y: np.ndarray) -> float:
    """Brute force: the same marginal likelihood on a log grid of (alpha, beta), coarse then
    fine around the best point (the eigenbasis of F F^T only makes each evaluation cheap)."""
    lam, q = np.linalg.eigh(features @ features.T)
    lam = np.clip(lam, 0, None)
    proj2 = (q.T @ y) ** 2

    def evidence(log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
        var = lam[None, None, :] / np.exp(log_a)[:, :, None] + 1 / np.exp(log_b)[:, :, None]
        return (
            -0.5 * (proj2 / var).sum(-1)
            - 0.5 * np.log(var).sum(-1)
            - len(y) / 2 * np.log(2 * np.pi)
        )

    center, width = (0.0, 0.0), 20.0
    for step in (0.1, 0.002):
        a = np.arange(center[0] - width, center[0] + width + step / 2, step)
        b = np.arange(center[1] - width, center[1] + width + step / 2, step)
        grid_a, grid_b = np.meshgrid(a, b, indexing="ij")
        values = evidence(grid_a, grid_b)
        i, j = np.unravel_index(np.argmax(values), values.shape)
        center, width = (a[i], b[j]), 0.2
    return float(values[i, j])


def blobs(n: int, d: int, seed: int, informative: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    features = rng.normal(size=(n, d))
    features[:, 0] += informative * labels
    return features, labels


@pytest.mark.parametrize(
    "n, d", [(40, 6), (15, 25)], ids=["more-examples-than-dims", "more-dims-than-examples"]
)
def test_logme_equals_the_brute_force_maximum_of_the_evidence(n, d):
    features, labels = blobs(n, d, seed=1)
    fixed_point = est.logme_evidence(torch.tensor(features), est._one_hot(torch.tensor(labels)))
    per_class = []
    for c in range(3):
        y = (labels == c).astype(float)
        grid = grid_max_log_evidence(features, y) / n
        at_fixed_point = (
            explicit_log_evidence(
                features, y, float(fixed_point.alpha[c]), float(fixed_point.beta[c])
            )
            / n
        )
        # LogME's SVD-basis evidence is the marginal likelihood, and its fixed point is the maximum.
        assert fixed_point.evidence[c].item() == pytest.approx(at_fixed_point, abs=1e-7)
        assert grid <= at_fixed_point + 1e-7
        assert grid == pytest.approx(at_fixed_point, abs=1e-5)
        per_class.append(grid)
    assert est.logme(torch.tensor(features), torch.tensor(labels)) == pytest.approx(
        np.mean(per_class), abs=1e-5
    )


def numpy_hscore(features: np.ndarray, labels: np.ndarray, shrinkage: float) -> float:
    cov_f = np.cov(features, rowvar=False, bias=True)
    d = cov_f.shape[0]
    shrunk = (1 - shrinkage) * cov_f + shrinkage * np.trace(cov_f) / d * np.eye(d)
    g = np.zeros_like(features)
    for c in np.unique(labels):
        g[labels == c] = features[labels == c].mean(0)
    cov_g = np.cov(g, rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(shrunk) @ ((1 - shrinkage) * cov_g)))


def test_hscore_equals_its_definition_with_explicit_covariances():
    features, labels = blobs(60, 5, seed=2)
    t_features, t_labels = torch.tensor(features), torch.tensor(labels)
    assert est.hscore(t_features, t_labels, shrinkage=0.0) == pytest.approx(
        numpy_hscore(features, labels, 0.0), rel=1e-9
    )
    assert est.hscore(t_features, t_labels, shrinkage=0.3) == pytest.approx(
        numpy_hscore(features, labels, 0.3), rel=1e-9
    )
    lw = ledoit_wolf_shrinkage(features)
    assert est.ledoit_wolf_shrinkage(t_features - t_features.mean(0)) == pytest.approx(lw, rel=1e-9)
    assert est.hscore(t_features, t_labels) == pytest.approx(
        numpy_hscore(features, labels, lw), rel=1e-9
    )


def test_hscore_pseudo_inverse_copes_with_rank_deficient_features():
    features, labels = blobs(60, 5, seed=3)
    duplicated = np.concatenate([features, features[:, :2]], axis=1)  # covariance is singular
    score = est.hscore(torch.tensor(duplicated), torch.tensor(labels), shrinkage=0.0)
    assert score == pytest.approx(numpy_hscore(features, labels, 0.0), rel=1e-6)


# Four examples, two target classes, three source classes: small enough to check by hand.
SOURCE_PROBS = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
TARGETS = np.array([0, 0, 1, 1])


def numpy_leep(probs: np.ndarray, labels: np.ndarray) -> float:
    n, z = probs.shape
    joint = np.zeros((labels.max() + 1, z))
    for i in range(n):
        joint[labels[i]] += probs[i] / n
    conditional = joint / joint.sum(0)
    return float(
        np.mean(
            [
                np.log(sum(conditional[labels[i], k] * probs[i, k] for k in range(z)))
                for i in range(n)
            ]
        )
    )


def numpy_nce(hard: np.ndarray, labels: np.ndarray) -> float:
    total = 0.0
    for y in np.unique(labels):
        for z in np.unique(hard):
            p_yz = np.mean((labels == y) & (hard == z))
            if p_yz > 0:
                total += p_yz * np.log(p_yz / np.mean(hard == z))
    return total


def test_leep_equals_its_definition_on_a_hand_made_case():
    logits = torch.tensor(np.log(SOURCE_PROBS))  # softmax(log p) = p
    expected = numpy_leep(SOURCE_PROBS, TARGETS)
    assert est.leep(logits, torch.tensor(TARGETS)) == pytest.approx(expected, abs=1e-12)
    # By hand for the first example: P(y=0|z) = (0.65, 0.25, 0.1) / (0.8, 0.55, 0.65) * ... checked via numpy.
    assert expected < 0


def test_nce_equals_minus_conditional_entropy_on_a_hand_made_case():
    logits = torch.tensor(np.log(SOURCE_PROBS))
    # argmax labels are (0, 0, 2, 1): z=0 holds only class 0, z=2 and z=1 only class 1 -> H(Y|Z) = 0.
    assert est.nce(logits, torch.tensor(TARGETS)) == pytest.approx(0.0, abs=1e-12)
    mixed = np.array([0, 1, 1, 1])  # z=0 now holds one example of each class
    expected = numpy_nce(SOURCE_PROBS.argmax(1), mixed)
    assert expected == pytest.approx(-0.5 * np.log(2), abs=1e-12)
    assert est.nce(logits, torch.tensor(mixed)) == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def digits():
    """Real images (8x8 digits) and a real source model: logistic regression trained on one
    half; the other half is the target, seen through the source's logits."""
    data = load_digits()
    features, labels = data.data.astype(np.float64), data.target
    source = LogisticRegression(max_iter=300).fit(features[::2], labels[::2])
    target_x, target_y = features[1::2], labels[1::2]
    shuffled = np.random.default_rng(0).permutation(target_y)
    return (
        torch.tensor(target_x),
        torch.tensor(target_y),
        torch.tensor(shuffled),
        torch.tensor(source.decision_function(target_x)),
    )


@pytest.mark.parametrize("name", ["logme", "leep", "nce", "hscore"])
def test_separable_features_score_higher_than_shuffled_labels(name, digits):
    features, labels, shuffled, logits = digits
    estimator = {
        "logme": est.LogME(),
        "leep": est.LEEP(),
        "nce": est.NCE(),
        "hscore": est.HScore(),
    }[name]
    assert (
        estimator.score(features, labels, logits)
        > estimator.score(features, shuffled, logits) + 0.1
    )


def test_needs_source_head_is_declared_by_each_estimator():
    assert (est.LogME.needs_source_head, est.HScore.needs_source_head) == (False, False)
    assert not any(e.needs_source_head for e in (est.GBC, est.SFDA, est.PACTran))
    assert (est.LEEP.needs_source_head, est.NCE.needs_source_head) == (True, True)


@pytest.mark.parametrize("estimator", [est.LEEP(), est.NCE()], ids=["leep", "nce"])
def test_estimator_without_source_logits_says_what_it_needs(estimator):
    with pytest.raises(UserError, match="source classifier"):
        estimator.score(torch.randn(10, 4), torch.arange(10) % 2, None)


@pytest.mark.parametrize(
    "estimator",
    [est.LogME(), est.HScore(), est.GBC(), est.SFDA(), est.PACTran()],
    ids=["logme", "hscore", "gbc", "sfda", "pactran"],
)
@pytest.mark.parametrize(
    "features, message",
    [
        (torch.ones(12, 4), "identical for every example"),
        (
            torch.randn(12, 4).index_put_(
                (torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan"))
            ),
            "NaN or infinite values in 1 of 12",
        ),
        (torch.randn(12), "2-d"),
    ],
    ids=["constant", "nan", "1-d"],
)
def test_degenerate_features_are_rejected_with_a_message(estimator, features, message):
    with pytest.raises(UserError, match=message):
        estimator.score(features, torch.arange(12) % 3, None)


def test_bad_labels_are_rejected_with_a_message():
    with pytest.raises(UserError, match="fewer than two classes"):
        est.logme(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    with pytest.raises(UserError, match="9 labels for 10 examples"):
        est.hscore(torch.randn(10, 3), torch.arange(9) % 2)
    with pytest.raises(UserError, match="NaN or infinite"):
        est.leep(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1]))


def test_scores_do_not_depend_on_label_numbering():
    features, labels = blobs(30, 4, seed=4)
    renamed = np.array([7, 2, 5])[labels]  # sparse, unordered class ids
    for fn in (est.logme, est.hscore):
        assert fn(torch.tensor(features), torch.tensor(renamed)) == pytest.approx(
            fn(torch.tensor(features), torch.tensor(labels)), rel=1e-12
        )


# ------------------------------------------------------------------------------------ GBC


def numpy_gbc(features: np.ndarray, labels: np.ndarray, pca_dim: int, gaussian: str) -> float:
    """Pandy et al.'s definition with explicit covariance matrices: PCA (scikit-learn), per-class
    Gaussians N(mu_c, Sigma_c), Sigma_c diagonal (floored at 1e-4, as the authors' code) or
    sigma_c^2 I, and -sum over ordered pairs of exp(-D_B)."""
    if pca_dim:
        features = PCA(n_components=pca_dim, svd_solver="full").fit_transform(features)
    k = features.shape[1]
    stats = {}
    for c in np.unique(labels):
        x = features[labels == c]
        variance = np.maximum(x.var(axis=0), 1e-4)
        cov = np.diag(variance) if gaussian == "diagonal" else variance.mean() * np.eye(k)
        stats[c] = (x.mean(axis=0), cov)
    total = 0.0
    for ci, (mu1, s1) in stats.items():
        for cj, (mu2, s2) in stats.items():
            if ci == cj:
                continue
            s = (s1 + s2) / 2
            diff = mu1 - mu2
            log_ratio = (
                np.linalg.slogdet(s)[1]
                - np.linalg.slogdet(s1)[1] / 2
                - np.linalg.slogdet(s2)[1] / 2
            )
            distance = diff @ np.linalg.solve(s, diff) / 8 + log_ratio / 2
            total += np.exp(-distance)
    return -total


@pytest.mark.parametrize("gaussian", ["diagonal", "spherical"])
@pytest.mark.parametrize("pca_dim", [0, 4, 64], ids=["no-pca", "pca-4", "pca-beyond-dims"])
def test_gbc_equals_its_definition_with_explicit_covariances(gaussian, pca_dim):
    features, labels = blobs(45, 6, seed=5)
    features[:, 5] = 3.0 * (labels == 1)  # constant within each class: the variance floor
    expected = numpy_gbc(features, labels, min(pca_dim, 6), gaussian)
    score = est.gbc(torch.tensor(features), torch.tensor(labels), pca_dim, gaussian)
    assert score == pytest.approx(expected, rel=1e-9)


def test_gbc_spherical_and_diagonal_agree_in_one_dimension():
    features, labels = blobs(30, 4, seed=6)
    t_features, t_labels = torch.tensor(features), torch.tensor(labels)
    assert est.gbc(t_features, t_labels, 1, "spherical") == pytest.approx(
        est.gbc(t_features, t_labels, 1, "diagonal"), rel=1e-12
    )


def test_gbc_with_pca_is_invariant_to_translations_and_rotations_of_the_features():
    features, labels = blobs(40, 6, seed=7)
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(6, 6)))
    moved = features @ rotation + 5.0
    for pca_dim in (3, 6):
        assert est.gbc(torch.tensor(moved), torch.tensor(labels), pca_dim) == pytest.approx(
            est.gbc(torch.tensor(features), torch.tensor(labels), pca_dim), rel=1e-9
        )


def test_gbc_is_minus_the_number_of_ordered_class_pairs_for_identical_classes():
    # Every class has the same mean and variance, so each Bhattacharyya coefficient is 1.
    base = np.random.default_rng(8).normal(size=(10, 3))
    features = np.concatenate([base, base, base, base])
    labels = np.repeat(np.arange(4), 10)
    assert est.gbc(torch.tensor(features), torch.tensor(labels), 0) == pytest.approx(-12.0)


# ------------------------------------------------------------------------------------ SFDA


def reference_sfda(features: np.ndarray, labels: np.ndarray, shrinkage=None) -> float:
    """The SFDA authors' computation (TencentARC/SFDA, metrics.SFDA_Score), transliterated:
    Fisher projection from the generalised eigenproblem (S_b, S_w'), posteriors
    softmax(x V V^T mu_c - mu_c V V^T mu_c / 2 + log prior_c), ConfMix, refit, mean posterior."""

    def largest_eigenvalue(a):  # their power iteration, three rounds from the row sums
        x = a.sum(axis=1)
        for _ in range(3):
            y = a @ x / np.linalg.norm(a @ x)
            x = a @ y / np.linalg.norm(a @ y)
        return x @ a @ y

    def shrink(cov, amount):
        d = cov.shape[0]
        return (1 - amount) * cov + amount * np.trace(cov) / d * np.eye(d)

    def fit_predict(x, amount):
        classes = np.unique(labels)
        priors = np.array([np.mean(labels == c) for c in classes])
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        within = sum(
            p * np.cov(x[labels == c].T, bias=True).reshape(x.shape[1], -1)
            for p, c in zip(priors, classes, strict=True)
        )
        if amount is None:
            amount = max(np.exp(-5 * largest_eigenvalue(within)), 1e-10)
        total = shrink(np.cov(x.T, bias=True), amount)
        within = shrink(within, amount)
        evals, evecs = scipy.linalg.eigh(total - within, within)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        coef = means @ evecs @ evecs.T
        logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
        return scipy.special.softmax(logits, axis=1), amount

    features = features.copy()
    probs, amount = fit_predict(features, shrinkage)
    soft = scipy.special.softmax(probs, axis=1)
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    others = np.stack([np.delete(means, i, axis=0).mean(axis=0) for i in range(len(classes))])
    mixed = features.copy()
    for i, c in enumerate(classes):
        rows = labels == c
        confidence = soft[rows, i][:, None]
        mixed[rows] = confidence * features[rows] + (1 - confidence) * others[i]
    probs, _ = fit_predict(mixed, amount)
    return float(np.mean(probs[np.arange(len(labels)), np.searchsorted(classes, labels)]))


@pytest.mark.parametrize(
    "n, d", [(60, 5), (24, 30)], ids=["more-examples-than-dims", "more-dims-than-examples"]
)
def test_sfda_equals_the_reference_computation(n, d):
    features, labels = blobs(n, d, seed=9)
    score = est.sfda(torch.tensor(features), torch.tensor(labels))
    assert score == pytest.approx(reference_sfda(features, labels), rel=1e-7)
    fixed = est.sfda(torch.tensor(features), torch.tensor(labels), shrinkage=0.3)
    assert fixed == pytest.approx(reference_sfda(features, labels, shrinkage=0.3), rel=1e-9)


def test_sfda_eigenvalue_estimate_is_a_close_lower_bound_of_the_largest_eigenvalue():
    # Three rounds of the reference's power iteration: |A y| for a unit y, never above the top
    # eigenvalue, a few percent below it when the spectrum's top is not well separated.
    features, _ = blobs(40, 8, seed=10)
    within = np.cov(features.T, bias=True)
    estimate = est.largest_eigenvalue_estimate(torch.tensor(within))
    exact = np.linalg.eigvalsh(within)[-1]
    assert 0.95 * exact < estimate <= exact * (1 + 1e-12)
    # a start orthogonal to the matrix's range falls back to the exact eigenvalue
    balanced = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert est.largest_eigenvalue_estimate(torch.tensor(balanced)) == pytest.approx(2.0)


def test_sfda_is_invariant_to_translations_of_the_features():
    features, labels = blobs(45, 5, seed=11)
    assert est.sfda(torch.tensor(features + 7.0), torch.tensor(labels)) == pytest.approx(
        est.sfda(torch.tensor(features), torch.tensor(labels)), rel=1e-9
    )


# ------------------------------------------------------------------------------------ PACTran


def reference_pactran(
    features: np.ndarray,
    labels: np.ndarray,
    lambda_factor: float,
    prior_variance_factor: float,
    maxiter: int = 100,
    ftol: float = 1e-6,
    gtol: float = 1e-6,
) -> float:
    """The PACTran authors' PAC_Gauss (google-research/pactran_metrics,
    compute_metrics.calculate_pac_gauss), transliterated, negated: L-BFGS-B on the regularised
    cross-entropy from a small random start, then the bound with the diagonal curvature."""
    x = features - features.mean(axis=0, keepdims=True)
    onehot = np.eye(labels.max() + 1)[labels]
    n, d = x.shape
    k = onehot.shape[1]
    ldas2 = lambda_factor * n

    def unpack(theta):
        theta = theta.reshape(d + 1, k)
        return theta[:d], theta[d:]

    def loss(theta):
        w, b = unpack(theta)
        log_q = scipy.special.log_softmax(x @ w + b, axis=1)
        xent = np.sum(onehot * (np.log(onehot + 1e-10) - log_q)) / n
        return xent + 0.5 * np.sum(w**2) / ldas2

    def gradient(theta):
        w, b = unpack(theta)
        residual = (scipy.special.softmax(x @ w + b, axis=1) - onehot) / n
        return np.concatenate([x.T @ residual + w / ldas2, residual.sum(0, keepdims=True)]).ravel()

    start = np.concatenate([np.random.default_rng(0).normal(size=(d, k)) * 0.03, np.zeros((1, k))])
    theta = scipy.optimize.minimize(
        loss,
        start.ravel(),
        method="L-BFGS-B",
        jac=gradient,
        options={"maxiter": maxiter, "ftol": ftol, "gtol": gtol},  # the reference's tol=1e-6
    ).x
    w, b = unpack(theta)
    p = scipy.special.softmax(x @ w + b, axis=1)
    curvature = p - p**2
    h = np.concatenate([(x**2).T @ curvature + 1 / ldas2, curvature.sum(0, keepdims=True)])
    sigma2_inv = h.sum() * ldas2 / (k * d) + 1e-10
    s2 = prior_variance_factor / d
    return -(loss(theta) + 0.5 * k * d / ldas2 * s2 * np.log(sigma2_inv))


def converged_reference_pactran(features, labels, lambda_factor, prior_variance_factor):
    # No relative-reduction stop: L-BFGS-B runs until the gradient is ~1e-10 or the line search
    # can no longer decrease the loss in float64.
    return reference_pactran(
        features, labels, lambda_factor, prior_variance_factor, maxiter=10_000, ftol=0, gtol=1e-12
    )


@pytest.mark.parametrize("lambda_factor, prior_variance_factor", [(1.0, 100.0), (0.1, 1.0)])
def test_pactran_equals_the_reference_computation_at_the_optimum(
    lambda_factor, prior_variance_factor
):
    # Both optimisers stop with a gradient of a few 1e-9 (float64's limit for this loss), so the
    # weights, and through the curvature the score, agree to ~1e-9 relative, not to the last bit.
    features, labels = blobs(60, 5, seed=12)
    expected = converged_reference_pactran(features, labels, lambda_factor, prior_variance_factor)
    score = est.pactran(
        torch.tensor(features),
        torch.tensor(labels),
        lambda_factor,
        prior_variance_factor,
        max_iter=1000,
        tolerance=1e-20,
    )
    assert score == pytest.approx(expected, rel=1e-7)


def test_pactran_defaults_spend_the_reference_budget_and_land_near_the_optimum():
    # 100 L-BFGS iterations, tolerance 1e-6, as the reference's scipy call; both stop near the
    # optimum, from different starts (zero here, small random weights there).
    features, labels = blobs(60, 5, seed=13)
    optimum = converged_reference_pactran(features, labels, 1.0, 100.0)
    default = est.PACTran().score(torch.tensor(features), torch.tensor(labels))
    assert default == pytest.approx(optimum, rel=1e-4)
    assert reference_pactran(features, labels, 1.0, 100.0) == pytest.approx(optimum, rel=1e-4)


def test_pactran_is_invariant_to_translations_of_the_features():
    features, labels = blobs(45, 5, seed=14)
    assert est.pactran(torch.tensor(features - 3.0), torch.tensor(labels)) == pytest.approx(
        est.pactran(torch.tensor(features), torch.tensor(labels)), rel=1e-9
    )


# ------------------------------------------------------------------------------------ all newer estimators


@pytest.mark.parametrize(
    "estimator", [est.GBC(), est.SFDA(), est.PACTran()], ids=["gbc", "sfda", "pactran"]
)
def test_newer_estimators_score_separable_features_higher_than_shuffled_labels(estimator, digits):
    features, labels, shuffled, _ = digits
    assert estimator.score(features, labels) > estimator.score(features, shuffled) + 0.1


def test_newer_estimators_do_not_depend_on_label_numbering():
    features, labels = blobs(30, 4, seed=15)
    renamed = np.array([7, 2, 5])[labels]
    for fn in (est.gbc, est.sfda, est.pactran):
        assert fn(torch.tensor(features), torch.tensor(renamed)) == pytest.approx(
            fn(torch.tensor(features), torch.tensor(labels)), rel=1e-9
        )


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda f, y: est.gbc(f, y.clone().index_fill_(0, torch.tensor([0]), 9)),
            "GBC needs at least 2 examples of every class; class 9 has 1",
        ),
        (
            lambda f, y: est.gbc(f, y, gaussian="full"),
            "gaussian must be one of diagonal, spherical",
        ),
        (lambda f, y: est.gbc(f, y, pca_dim=-1), "pca_dim must be >= 0"),
        (lambda f, y: est.sfda(f, y, shrinkage=1.5), r"shrinkage must be in \[0, 1\]"),
        (
            lambda f, y: est.sfda(
                f[y.argsort()].index_select(0, torch.tensor([0, 0, 5, 5, 9, 9])),
                y[y.argsort()].index_select(0, torch.tensor([0, 0, 5, 5, 9, 9])),
            ),
            "no within-class scatter",
        ),
        (lambda f, y: est.pactran(f, y, lambda_factor=0.0), "lambda_factor must be > 0"),
        (lambda f, y: est.pactran(f, y, max_iter=0), "max_iter must be >= 1"),
    ],
    ids=[
        "gbc-singleton-class",
        "gbc-gaussian",
        "gbc-pca-dim",
        "sfda-shrinkage",
        "sfda-no-scatter",
        "pactran-lambda",
        "pactran-max-iter",
    ],
)
def test_newer_estimators_reject_bad_inputs_with_one_line(call, message):
    features, labels = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 3
    with pytest.raises(UserError, match=message) as caught:
        call(features, labels)
    assert "\n" not in str(caught.value)


def test_newer_estimators_are_registered_with_their_papers_and_options(host):
    from tlbench.specs import resolve_options

    expected = {
        "gbc": ({"pca_dim": 16, "gaussian": "spherical"}, est.GBC(16, "spherical")),
        "sfda": ({"shrinkage": 0.2}, est.SFDA(0.2)),
        "pactran": ({"lambda_factor": 10.0, "max_iter": 50}, est.PACTran(10.0, 100.0, 50)),
    }
    for name, (given, built) in expected.items():
        registered, _ = host.registry.lookup("estimator", name)
        card = registered.spec.card
        assert card["higher_is_better"] is True and card["paper"].startswith("https://")
        options = resolve_options(registered.spec.options, given)
        assert registered.spec.load_factory()(options) == built
        defaults = resolve_options(registered.spec.options, {})
        assert registered.spec.load_factory()(defaults) == type(built)()
