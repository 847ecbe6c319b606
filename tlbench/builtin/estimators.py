"""Built-in transferability estimators, registered through the public ``register_estimators`` hook.

Factories are lazy ``"tlbench.estimators:make_*"`` strings, so listing estimators never imports
torch. The math and its references live in ``tlbench.estimators``.
"""

from __future__ import annotations

from tlbench import hookimpl
from tlbench.specs import EstimatorSpec, Option

_SOURCE_HEAD_NOTE = (
    "needs the source model's classifier (skipped for headless and from-scratch models)"
)


@hookimpl
def register_estimators(register):
    register(
        EstimatorSpec(
            name="logme",
            factory="tlbench.estimators:make_logme",
            description="LogME (You et al. 2021): maximum evidence of a Bayesian linear model on the frozen features",
            tags=("features",),
            card={"paper": "https://arxiv.org/abs/2102.11005", "higher_is_better": True},
        )
    )
    register(
        EstimatorSpec(
            name="leep",
            factory="tlbench.estimators:make_leep",
            description=f"LEEP (Nguyen et al. 2020): log expected empirical prediction of the source classifier; {_SOURCE_HEAD_NOTE}",
            tags=("source-head",),
            card={"paper": "https://arxiv.org/abs/2002.12462", "higher_is_better": True},
        )
    )
    register(
        EstimatorSpec(
            name="nce",
            factory="tlbench.estimators:make_nce",
            description=f"NCE (Tran et al. 2019): negative conditional entropy of target labels given the source's argmax labels; {_SOURCE_HEAD_NOTE}",
            tags=("source-head",),
            card={"paper": "https://arxiv.org/abs/1908.08142", "higher_is_better": True},
        )
    )
    register(
        EstimatorSpec(
            name="hscore",
            factory="tlbench.estimators:make_hscore",
            description="H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E(f|y))) on the frozen features, Ledoit-Wolf shrunk by default",
            options=(
                Option(
                    "shrinkage",
                    float,
                    None,
                    "Shrinkage of cov(f) toward a scaled identity; omitted: the Ledoit-Wolf estimate (regularised H-score); 0: plain pseudo-inverse.",
                    minimum=0.0,
                    maximum=1.0,
                ),
            ),
            tags=("features",),
            card={
                "paper": "https://ieeexplore.ieee.org/document/8803726",
                "higher_is_better": True,
            },
        )
    )
