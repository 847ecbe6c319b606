"""Which layers train: layer groups and selections, layer transfer (Yosinski et al. 2014),
surgical fine-tuning, partial unfreezing's default, L2-SP, and the reinit-top source family.
Real timm models; training runs use efficientnet-lite0 at 32 px on 200 digits, one epoch."""

from __future__ import annotations

import pytest
import timm
import torch

from tlbench.builtin.layer_choice import (
    by_fraction,
    model_groups,
    reinitialise,
    select,
)
from tlbench.cache import Cache
from tlbench.components import BuildContext, Cell, CellContext
from tlbench.errors import UserError
from tlbench.specs import resolve_options

FAST = {"epochs": 1, "lr": 3e-3, "batch_size": 32, "refit": False}
LITE0 = "tf_efficientnet_lite0"
LITE0_STAGES = [
    "conv_stem+bn1",
    "blocks.0.0",
    "blocks.1",
    "blocks.2",
    "blocks.3",
    "blocks.4",
    "blocks.5",
    "blocks.6.0+conv_head+bn2",
]


@pytest.fixture(scope="module")
def registry():
    from tlbench.plugins import load_plugins

    return load_plugins(load_entrypoints=False).registry


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("layers"))


@pytest.fixture
def strategy(registry, lite0, digits_data, cache):
    """strategy(name, **options) -> (strategy object, its CellContext), through the registry."""

    def make(name, seed=0, **given):
        registered, _ = registry.lookup("strategy", name)
        options = resolve_options(registered.options, given)
        cell = Cell(
            "t", lite0.name, "digits", name, seed, lite0.name, "digits", name, {}, {}, options
        )
        ctx = CellContext(
            cell=cell,
            source=lite0,
            data=digits_data,
            device=torch.device("cpu"),
            cache=cache,
            seed=seed,
            log=lambda m: None,
        )
        return registered.spec.load_factory()(options), ctx

    return make


def lite0_model(num_classes=10):
    return timm.create_model(LITE0, pretrained=False, num_classes=num_classes)


# ------------------------------------------------------------------------------ groups


def test_groups_are_timm_stages_or_blocks_named_by_their_modules_without_the_head():
    model = lite0_model()
    stages, blocks = model_groups(model, "stage"), model_groups(model, "block")
    assert [g.name for g in stages] == LITE0_STAGES
    assert (
        len(blocks) == 17 and blocks[2].name == "blocks.1.0" and blocks[-1].name == LITE0_STAGES[-1]
    )
    head = {"classifier.weight", "classifier.bias"}
    assert all(not head & set(g.params) for g in stages)
    every = {n for g in blocks for n in g.params} | head
    assert every == {n for n, _ in model.named_parameters()}


def test_selection_by_alias_position_slice_and_name():
    groups = model_groups(lite0_model(), "stage")

    def names(spec):
        return [g.name for g in select(groups, spec, "option 'groups'")]

    assert names("first") == ["conv_stem+bn1"] and names("middle") == ["blocks.3"]
    assert names("last") == names("-1") == ["blocks.6.0+conv_head+bn2"]
    assert names("-3:") == LITE0_STAGES[-3:] and names("1:3") == LITE0_STAGES[1:3]
    assert names("conv_head, 0") == [LITE0_STAGES[0], LITE0_STAGES[-1]]  # model order, once
    blocks = model_groups(lite0_model(), "block")
    assert [g.name for g in select(blocks, "blocks.5", "x")] == [f"blocks.5.{i}" for i in range(4)]


def test_a_selection_that_names_nothing_is_one_clear_error():
    groups = model_groups(lite0_model(), "stage")
    with pytest.raises(
        UserError,
        match=r"option 'groups': no layer group holds 'layer4' \(groups: conv_stem\+bn1, ",
    ):
        select(groups, "layer4", "option 'groups'")
    with pytest.raises(UserError, match=r"position 8 is outside the model's 8 layer groups"):
        select(groups, "8", "option 'groups'")
    with pytest.raises(UserError, match=r"slice '5:2' selects none"):
        select(groups, "5:2", "option 'groups'")


def test_fraction_picks_the_fewest_output_side_blocks_holding_that_share_of_parameters():
    lite0 = model_groups(lite0_model(), "block")
    # lite0's last block carries conv_head: 30% of the backbone on its own.
    assert [g.name for g in by_fraction(lite0, 0.25)] == ["blocks.6.0+conv_head+bn2"]
    assert len(by_fraction(lite0, 0.6)) == 4  # 30 + 14 + 14 = 58% is not yet 60%
    vit = model_groups(timm.create_model("vit_tiny_patch16_224", pretrained=False), "block")
    chosen = by_fraction(vit, 0.25)
    share = sum(g.size for g in chosen) / sum(g.size for g in vit)
    assert len(chosen) == 4 and 0.25 <= share < 0.34  # three blocks would hold 24.6%
    # ConvNeXt's last group is its final norm (no weight to speak of): never the whole answer.
    convnext = model_groups(timm.create_model("convnext_atto", pretrained=False), "stage")
    assert [g.name for g in by_fraction(convnext, 0.25)] == ["stages.3", "head.norm"]


def test_reinitialise_gives_chosen_groups_timms_init_and_leaves_the_rest():
    model = lite0_model()
    with torch.no_grad():  # a "trained" source: every tensor moved away from any init
        for value in model.state_dict().values():
            value.add_(1)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)  # the global RNG must not matter, and must not be disturbed
    before = torch.rand(1)
    reinitialise(model, model_groups(model, "stage")[-2:], arch=LITE0, in_chans=3, seed=0)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    torch.manual_seed(0)
    init = timm.create_model(LITE0, pretrained=False, num_classes=0).state_dict()
    state = model.state_dict()
    assert torch.equal(state["blocks.5.0.conv_pw.weight"], init["blocks.5.0.conv_pw.weight"])
    assert torch.equal(state["bn2.running_var"], init["bn2.running_var"])  # buffers too
    assert torch.equal(state["blocks.4.0.conv_pw.weight"], trained["blocks.4.0.conv_pw.weight"])
    assert torch.equal(state["classifier.weight"], trained["classifier.weight"])


# ------------------------------------------------------------------------------ partial, surgical


def test_partial_unfreeze_default_trains_about_a_quarter_by_whole_blocks(strategy):
    partial, ctx = strategy("partial-unfreeze", **FAST)
    partial.check(ctx)
    assert partial.record == {
        "unit": "block",
        "trained_groups": ["blocks.6.0+conv_head+bn2", "classifier"],
    }


def test_partial_unfreeze_takes_k_or_named_groups_at_either_unit(strategy):
    by_k, ctx = strategy("partial-unfreeze", k=2, unit="stage", **FAST)
    by_k.check(ctx)
    assert by_k.record["trained_groups"] == LITE0_STAGES[-2:] + ["classifier"]
    named, ctx = strategy("partial-unfreeze", groups="blocks.5.3, -1", **FAST)
    named.check(ctx)
    assert named.record["trained_groups"] == ["blocks.5.3", LITE0_STAGES[-1], "classifier"]
    both, ctx = strategy("partial-unfreeze", k=1, groups="-1", **FAST)
    with pytest.raises(UserError, match=r"options 'k' and 'groups' both choose what trains"):
        both.check(ctx)


def test_surgical_trains_one_group_and_the_head_and_records_them(strategy):
    surgical, ctx = strategy("surgical", block="last", **FAST)
    result = surgical.run(ctx)
    assert result.hparams["trained_groups"] == [LITE0_STAGES[-1], "classifier"]
    assert result.hparams["unit"] == "stage" and result.hparams["layer_groups"] == 8
    assert result.cost["prefix_cache"] is True and result.cost["prefix_boundary"] == "blocks.6.0"
    # 1280x320 conv_head + the last block + the head: 30% of lite0
    assert 29 < result.cost["trainable_pct"] < 32
    assert result.predictions is not None and len(result.predictions) == 200
    middle, ctx = strategy("surgical", block="middle", **FAST)
    middle.check(ctx)
    assert middle.record["trained_groups"] == ["blocks.3", "classifier"]


# ------------------------------------------------------------------------------ layer transfer


def test_layer_transfer_frozen_trains_only_the_reinitialised_top_and_caches_the_kept_prefix(
    strategy,
):
    transfer, ctx = strategy("layer-transfer", keep=7, mode="frozen", **FAST)
    result = transfer.run(ctx)
    assert result.hparams["kept_groups"] == LITE0_STAGES[:7]
    assert result.hparams["reinitialised_groups"] == result.hparams["trained_groups"][:-1]
    assert result.hparams["trained_groups"] == [LITE0_STAGES[-1], "classifier"]
    assert result.cost["prefix_boundary"] == "blocks.6.0"
    assert result.metrics["top1"] > 10  # trains: a fresh top on frozen ImageNet features
    assert result.hparams["bn"] == "train"  # the re-initialised top normalises with its batches


def test_layer_transfer_of_every_group_fine_tuned_is_full_fine_tuning(strategy):
    transfer, ctx = strategy("layer-transfer", keep=8, mode="finetune", **FAST)
    full, full_ctx = strategy("full-finetune", **FAST)
    ours, theirs = transfer.run(ctx), full.run(full_ctx)
    assert ours.metrics == theirs.metrics and ours.hparams["reinitialised_groups"] == []
    assert ours.cost["trainable_pct"] == 100.0


def test_layer_transfer_setup_reinitialises_exactly_the_groups_not_kept(strategy):
    transfer, ctx = strategy("layer-transfer", keep=6, mode="finetune", **FAST)
    transfer.check(ctx)
    built = ctx.source.build(num_classes=10, in_chans=ctx.data.in_chans, seed=0)
    source = {k: v.clone() for k, v in built.state_dict().items()}
    state = transfer.setup(built, ctx, "search").state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        fresh = timm.create_model(LITE0, pretrained=False, num_classes=0).state_dict()
    assert torch.equal(state["blocks.4.2.conv_pwl.weight"], source["blocks.4.2.conv_pwl.weight"])
    assert torch.equal(state["blocks.5.1.conv_pwl.weight"], fresh["blocks.5.1.conv_pwl.weight"])
    assert torch.equal(state["conv_head.weight"], fresh["conv_head.weight"])


def test_keeping_more_groups_than_the_model_has_is_a_user_error_naming_the_cell(strategy):
    transfer, ctx = strategy("layer-transfer", keep=9, mode="frozen", **FAST)
    with pytest.raises(
        UserError,
        match=r"cell efficientnet_lite0.in1k x digits x layer-transfer .*'keep' = 9 .* only 8 layer groups",
    ):
        transfer.check(ctx)


# ------------------------------------------------------------------------------ L2-SP


def test_l2_sp_penalty_is_half_alpha_distance_to_the_source_plus_half_beta_head_norm(strategy):
    l2sp, ctx = strategy("l2-sp", alpha=0.1, beta=0.01)
    model = l2sp.setup(lite0_model(), ctx, "search")
    assert l2sp.penalty(model).item() == pytest.approx(
        0.01 / 2 * sum((p**2).sum().item() for p in model.get_classifier().parameters()), rel=1e-5
    )
    with torch.no_grad():
        model.conv_head.weight.add_(0.5)
    moved = model.conv_head.weight.numel() * 0.25 * 0.1 / 2
    head = 0.01 / 2 * sum((p**2).sum().item() for p in model.get_classifier().parameters())
    assert l2sp.penalty(model).item() == pytest.approx(moved + head, rel=1e-5)


def test_l2_sp_fine_tunes_with_sgd_and_no_weight_decay_by_default(strategy):
    l2sp, ctx = strategy("l2-sp", epochs=1, lr=1e-2, batch_size=32, refit=False)
    result = l2sp.run(ctx)
    assert result.hparams["optimizer"] == "sgd" and result.hparams["weight_decay"] == 0.0
    assert result.hparams["alpha"] == 0.01 and result.hparams["beta"] == 0.01
    assert result.metrics["top1"] > 10


def test_the_engine_adds_the_recipe_penalty_to_every_step():
    from tlbench.engine import TrainConfig, train_loop

    class Feeder:
        prefix_cache = False

        def __init__(self, model):
            self.model = model

        def batches(self, split, batch_size, *, shuffle, seed):
            yield (
                torch.randn(8, 4, generator=torch.Generator().manual_seed(seed)),
                torch.zeros(8, dtype=torch.long),
            )

        def forward(self, x):
            return self.model(x)

    def trained(penalty):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        cfg = TrainConfig(epochs=20, lr=0.1, weight_decay=0.0, warmup_epochs=0.0, bn="frozen")
        train_loop(
            model,
            Feeder(model),
            cfg,
            split="train",
            epochs=20,
            steps_per_epoch=1,
            seed=0,
            device=torch.device("cpu"),
            precision="fp32",
            penalty=penalty,
        )
        return model.weight.mean().item()

    # A pull towards 3 moves every weight up; the loss alone moves the two rows apart.
    assert trained(lambda m: 10.0 * ((m.weight - 3) ** 2).sum()) > 0.5
    assert abs(trained(None)) < 0.3


# ------------------------------------------------------------------------------ reinit-top


def test_reinit_top_resets_the_top_k_groups_of_its_base_and_keeps_its_head(registry, tmp_path):

    context = BuildContext(cache=Cache(tmp_path), device="cpu", registry=registry, seed=0)
    registered, argument = registry.lookup("model", "reinit-top:efficientnet_lite0.in1k")
    factory = registered.spec.load_factory()
    base, _ = registry.lookup("model", "efficientnet_lite0.in1k")
    plain = base.spec.load_factory()(None, {"input_size": 32}, context)
    reset = factory(argument, {"k": 2, "unit": "stage", "input_size": 32}, context)
    assert reset.card["reinitialised_groups"] == LITE0_STAGES[-2:]
    assert reset.data_config == plain.data_config and reset.fingerprint != plain.fingerprint
    ours, theirs = reset.build(0).state_dict(), plain.build(0).state_dict()
    assert torch.equal(ours["blocks.4.0.conv_pw.weight"], theirs["blocks.4.0.conv_pw.weight"])
    assert not torch.equal(ours["blocks.5.0.conv_pw.weight"], theirs["blocks.5.0.conv_pw.weight"])
    head = reset.build_with_source_head().get_classifier().weight
    assert torch.equal(head, plain.build_with_source_head().get_classifier().weight)
    other_seed = factory(
        argument,
        {"k": 2, "unit": "stage"},
        BuildContext(cache=Cache(tmp_path), device="cpu", registry=registry, seed=1),
    )
    assert other_seed.fingerprint != reset.fingerprint
    with pytest.raises(
        UserError, match=r"'k' = 9 but tf_efficientnet_lite0 has only 8 layer groups"
    ):
        factory(argument, {"k": 9, "unit": "stage"}, context)
