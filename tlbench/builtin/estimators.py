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


SPECS = (
    EstimatorSpec(
        name="logme",
        factory="tlbench.estimators:make_logme",
        description="LogME (You et al. 2021): maximum evidence of a Bayesian linear model on the frozen features",
        tags=("features",),
        card={"paper": "https://arxiv.org/abs/2102.11005", "higher_is_better": True},
    ),
    EstimatorSpec(
        name="leep",
        factory="tlbench.estimators:make_leep",
        description=f"LEEP (Nguyen et al. 2020): log expected empirical prediction of the source classifier; {_SOURCE_HEAD_NOTE}",
        tags=("source-head",),
        card={"paper": "https://arxiv.org/abs/2002.12462", "higher_is_better": True},
    ),
    EstimatorSpec(
        name="nce",
        factory="tlbench.estimators:make_nce",
        description=f"NCE (Tran et al. 2019): negative conditional entropy of target labels given the source's argmax labels; {_SOURCE_HEAD_NOTE}",
        tags=("source-head",),
        card={"paper": "https://arxiv.org/abs/1908.08142", "higher_is_better": True},
    ),
    EstimatorSpec(
        name="hscore",
        factory="tlbench.estimators:make_hscore",
        description="H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E(f|y))) on the frozen features, Ledoit-Wolf shrunk by default",
        options=(
            Option(
                "shrinkage",
                float,
                default=None,
                help="Shrinkage of cov(f) toward a scaled identity; omitted: the Ledoit-Wolf estimate (regularised H-score); 0: plain pseudo-inverse.",
                minimum=0.0,
                maximum=1.0,
            ),
        ),
        tags=("features",),
        card={
            "paper": "https://ieeexplore.ieee.org/document/8803726",
            "higher_is_better": True,
        },
    ),
    EstimatorSpec(
        name="gbc",
        factory="tlbench.estimators:make_gbc",
        description="GBC (Pandy et al. 2022): minus the summed Bhattacharyya coefficients between per-class Gaussians on PCA-reduced frozen features",
        options=(
            Option(
                "pca_dim",
                int,
                default=64,
                help="Principal components the features are projected onto first (the paper's 64); 0: the features as they are.",
                minimum=0,
            ),
            Option(
                "gaussian",
                str,
                default="diagonal",
                help="Per-class covariance: one variance per dimension (the paper's recommendation) or one per class.",
                choices=("diagonal", "spherical"),
            ),
        ),
        tags=("features",),
        card={"paper": "https://arxiv.org/abs/2111.12780", "higher_is_better": True},
    ),
    EstimatorSpec(
        name="sfda",
        factory="tlbench.estimators:make_sfda",
        description="SFDA (Shao et al. 2022): mean true-class posterior of a regularised Fisher discriminant refitted on self-challenging (ConfMix) features",
        options=(
            Option(
                "shrinkage",
                float,
                default=None,
                help="Shrinkage of the within-class scatter toward a scaled identity; omitted: exp(-5 x its largest eigenvalue), as the authors' code.",
                minimum=0.0,
                maximum=1.0,
            ),
        ),
        tags=("features",),
        card={
            "paper": "https://arxiv.org/abs/2207.03036",
            "code": "https://github.com/TencentARC/SFDA",
            "higher_is_better": True,
        },
    ),
    EstimatorSpec(
        name="pactran",
        factory="tlbench.estimators:make_pactran",
        description="PACTran-Gaussian (Ding et al. 2022): PAC-Bayesian bound of an L2-regularised softmax head on the frozen features, negated so that higher is better",
        options=(
            Option(
                "lambda_factor",
                float,
                default=1.0,
                help="lambda: the head's weights are penalised by |W|^2 / (2 lambda N) (the reference sweeps 10, 1, 0.1).",
                minimum=1e-6,
            ),
            Option(
                "prior_variance_factor",
                float,
                default=100.0,
                help="Prior variance of the weights times D (sigma0^2 = factor / D); the reference pairs 100 and 10 with lambda 1.",
                minimum=1e-6,
            ),
            Option(
                "max_iter",
                int,
                default=100,
                help="L-BFGS iterations at most (the reference's budget).",
                minimum=1,
            ),
        ),
        tags=("features",),
        card={
            "paper": "https://arxiv.org/abs/2203.05126",
            "code": "https://github.com/google-research/pactran_metrics",
            "higher_is_better": True,
            "note": "the paper's PACTran value is lower-is-better; tlbench reports its negation",
        },
    ),
)


@hookimpl
def register_estimators(register):
    for spec in SPECS:
        register(spec)
