"""The strategy authoring kit: a strategy exposes engine options under its own names or only a
few of them, without filtering by hand; messages and records use its names; the learning rate
each parameter group trained with is recorded."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from tlbench.api import FineTuneStrategy, UserError, training_options
from tlbench.components import Cell, CellContext
from tlbench.specs import resolve_options


@dataclass
class Llrd(FineTuneStrategy):
    """Layer-wise lr decay, its option called ``decay``."""

    rename = {"layer_decay": "decay"}


LLRD_OPTIONS = training_options(
    lr=[3e-3],
    epochs=1,
    only=("finetune_lr", "epochs", "batch_size", "layer_decay"),
    rename=Llrd.rename,
)


def test_options_are_narrowed_and_renamed_as_asked():
    assert {o.name for o in LLRD_OPTIONS} == {"finetune_lr", "decay", "epochs", "batch_size"}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['layer_decy'\]"):
        training_options(lr=[1e-3], epochs=1, rename={"layer_decy": "decay"})


def test_engine_options_undo_the_renaming():
    options = resolve_options(LLRD_OPTIONS, {"decay": 0.7})
    assert Llrd(options).engine_options()["layer_decay"] == 0.7
    assert "decay" not in Llrd(options).engine_options()


def test_check_names_the_option_the_user_wrote():
    options = resolve_options(LLRD_OPTIONS, {"decay": 0.7})
    no_groups = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    ctx = SimpleNamespace(
        cell=SimpleNamespace(label="cell m x d x llrd (seed 0)"),
        source=SimpleNamespace(arch="plain", build=lambda **_kw: no_groups),
        data=SimpleNamespace(num_classes=2, in_chans=1),
        seed=0,
    )
    with pytest.raises(UserError, match="strategy option 'decay' needs a timm model"):
        Llrd(options).check(ctx)


def test_records_use_the_strategys_names_and_hold_the_learning_rate_of_each_group(
    lite0, digits_data, tmp_path
):
    from tlbench.cache import Cache

    options = resolve_options(LLRD_OPTIONS, {"decay": 0.5, "batch_size": 64})
    cell = Cell("t", "lite0", "digits", "llrd", 0, "lite0", "digits", "llrd", {}, {}, options)
    ctx = CellContext(
        cell=cell,
        source=lite0,
        data=digits_data,
        device=torch.device("cpu"),
        cache=Cache(tmp_path),
        seed=0,
        log=lambda _m: None,
    )
    result = Llrd(options).run(ctx)

    assert result.hparams["decay"] == 0.5 and "layer_decay" not in result.hparams
    groups = result.hparams["lr_groups"]
    scales = [g["lr_scale"] for g in groups]
    assert len(groups) > 2 and scales == sorted(scales) and scales[-1] == 1.0
    assert all(g["lr"] == pytest.approx(3e-3 * g["lr_scale"]) for g in groups)
    assert sum(g["params"] for g in groups) == result.cost["trainable_params"]
