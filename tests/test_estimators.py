"""Each estimator against an independent computation of its definition, a sanity property on
real data, and clear messages for inputs it cannot score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.datasets import load_digits
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
    assert (est.LEEP.needs_source_head, est.NCE.needs_source_head) == (True, True)


@pytest.mark.parametrize("estimator", [est.LEEP(), est.NCE()], ids=["leep", "nce"])
def test_estimator_without_source_logits_says_what_it_needs(estimator):
    with pytest.raises(UserError, match="source classifier"):
        estimator.score(torch.randn(10, 4), torch.arange(10) % 2, None)


@pytest.mark.parametrize("estimator", [est.LogME(), est.HScore()], ids=["logme", "hscore"])
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
