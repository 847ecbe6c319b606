"""Weighted k-NN and nearest class mean on frozen features: the papers' rules on small hand-made
features, and real cells on digits with efficientnet-lite0 at 32 px sharing the probe's cache."""

from __future__ import annotations

import pytest
import torch

from tlbench.builtin.feature_strategies import knn_logits, ncm_logits
from tlbench.cache import Cache
from tlbench.components import Cell, CellContext
from tlbench.errors import UserError
from tlbench.specs import resolve_options


@pytest.fixture(scope="module")
def registry():
    from tlbench.plugins import load_plugins

    return load_plugins(load_entrypoints=False).registry


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("features"))


@pytest.fixture
def context(lite0, digits_data, cache):
    def _context(name, options):
        cell = Cell("t", lite0.name, "digits", name, 0, lite0.name, "digits", name, {}, {}, options)
        return CellContext(
            cell=cell,
            source=lite0,
            data=digits_data,
            device=torch.device("cpu"),
            cache=cache,
            seed=0,
            log=lambda m: None,
        )

    return _context


@pytest.fixture
def run(registry, context):
    def _run(name, **given):
        registered, _ = registry.lookup("strategy", name)
        options = resolve_options(registered.options, given)
        return registered.spec.load_factory()(options).run(context(name, options))

    return _run


# ------------------------------------------------------------------------------ the rules


def test_knn_votes_with_exp_similarity_over_temperature_of_the_k_nearest():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.2]])  # cosine, not distance: its length does not matter
    logits = knn_logits(bank, labels, query, 3, k=2, temperature=0.5)
    cosine = (
        torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    )
    votes = torch.zeros(3)
    for i in cosine[0].topk(2).indices:  # the two nearest: rows 0 and 1
        votes[labels[i]] += torch.exp(cosine[0, i] / 0.5)
    assert torch.allclose(logits.softmax(1)[0], votes / votes.sum(), atol=1e-6)
    assert logits.softmax(1)[0, 2] < 1e-6  # a class without a neighbour gets no share


def test_knn_with_one_neighbour_is_the_nearest_neighbour_rule():
    gen = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=gen), torch.randn(20, 8, generator=gen)
    labels = torch.randint(0, 4, (50,), generator=gen)
    nearest = (
        torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    ).argmax(1)
    predicted = knn_logits(bank, labels, queries, 4, k=1, temperature=0.07).argmax(1)
    assert torch.equal(predicted, labels[nearest])


def test_ncm_logits_are_minus_half_squared_distance_to_each_class_mean():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 1.0]])
    logits = ncm_logits(features, labels, queries, 3, normalize="none")
    assert logits[0, :2].tolist() == pytest.approx([-0.5 * 1.0, -0.5 * (10**2 + 9**2)])
    assert logits[0, 2] == float("-inf")  # no training example of class 2


def test_ncm_cl2n_centres_on_the_fitting_set_not_on_the_queries():
    gen = torch.Generator().manual_seed(1)
    features, labels = torch.randn(30, 5, generator=gen) + 4.0, torch.arange(30) % 3
    query = torch.randn(1, 5, generator=gen)
    alone = ncm_logits(features, labels, query, 3, normalize="cl2n")
    with_others = ncm_logits(
        features, labels, torch.cat([query, query + 100.0]), 3, normalize="cl2n"
    )
    assert torch.allclose(alone[0], with_others[0])


# ------------------------------------------------------------------------------ cells


def test_knn_chooses_k_on_val_and_reads_the_cached_features_a_probe_reads(run, context, cache):
    from tlbench.engine import cell_features

    cell_features(context("linear-probe", {}), ("train", "val", "trainval", "test"))
    entries = sorted(p.name for p in cache.root.rglob("*"))
    result = run("knn", k=[5, 20, 10_000])
    assert sorted(p.name for p in cache.root.rglob("*")) == entries  # nothing new computed
    tried = [row["k"] for row in result.hparams["sweep"]]
    assert tried == [5, 20, 100]  # capped at the 100 training examples, in the listed order
    best = max(result.hparams["sweep"], key=lambda row: row["val_top1"])
    assert result.hparams["k"] == best["k"] and result.metrics["val_top1"] == best["val_top1"]
    assert result.metrics["top1"] > 50 and result.predictions.top1 == pytest.approx(
        result.metrics["top1"]
    )
    assert result.cost["trainable_params"] == 0 and result.hparams["temperature"] == 0.07


def test_ncm_chooses_the_normalisation_on_val(run):
    result = run("ncm")
    assert [row["normalize"] for row in result.hparams["sweep"]] == ["none", "l2", "cl2n"]
    assert result.hparams["normalize"] in {"none", "l2", "cl2n"} and result.metrics["top1"] > 50
    assert result.cost["trainable_params"] == 10 * 1280  # one mean per class
    assert len(result.predictions) == 200


def test_a_zero_temperature_is_a_user_error_naming_the_cell(run):
    with pytest.raises(UserError, match=r"cell .* x knn \(seed 0\): .*'temperature' must be > 0"):
        run("knn", temperature=0.0)
