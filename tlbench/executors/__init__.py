"""Where the cells of a run execute: the executor registry and what ``--executor`` asks for.

    local    one slot in this process (the default)                 tlbench.executors.local
    process  N spawned worker processes, one per GPU or per core    tlbench.executors.process
    ray      one Ray actor per slot                                 tlbench.executors.ray
    slurm    one Slurm job per group of cells, through submitit     tlbench.executors.slurm

Every executor implements ``tlbench.executors.base.Executor``: ``run(groups, sink)`` takes the
groups of cells that share work and reports each cell as it starts and finishes. The runner
reaches them through one entry point, ``tlbench.executors.base.Batch`` (``prepare``: class
lookup, option check, construction, the checks before any training, grouping; ``run``). Options that
belong to one backend arrive as ``--executor-opt KEY=VALUE`` pairs (``ExecutorConfig.options``)
and each executor class parses its own (``Executor.OPTIONS``), so ``tlbench run`` does not grow a
flag per backend. This module is import-light: the CLI reads the registry's names before torch or
any backend loads; classes are imported from their ``"module:attr"`` strings when used.
"""

from tlbench.executors.registry import (
    EXECUTORS,
    ExecutorConfig,
    executor_class,
    executor_names,
    make_executor,
    parse_option,
)

__all__ = [
    "EXECUTORS",
    "ExecutorConfig",
    "executor_class",
    "executor_names",
    "make_executor",
    "parse_option",
]
