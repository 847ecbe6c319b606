"""The hooks tlbench calls. Each docstring is the reference entry for plugin authors.

Compatibility promise: hooks are only ever added, never renamed or removed, and new
arguments are optional (pluggy passes a hook implementation only the arguments it names).
"""

import pluggy

hookspec = pluggy.HookspecMarker("tlbench")


@hookspec
def register_models(register):
    """Register source models.

    Call ``register(ModelSpec(...))`` once per model. Registering must be cheap: no torch
    import, no disk or network access. The spec's ``factory`` (a callable or a lazy
    ``"module:attr"`` string) is called only when a cell needs the model, as
    ``factory(argument, options, context)`` and must return a ``tlbench.api.SourceModel``.
    """


@hookspec
def register_datasets(register):
    """Register target datasets.

    Call ``register(DatasetSpec(...))`` once per dataset. The factory is called as
    ``factory(argument, options, context)`` and returns a ``tlbench.api.TargetData``.
    """


@hookspec
def register_strategies(register):
    """Register fine-tuning strategies.

    Call ``register(StrategySpec(...))`` once per strategy. The factory is called as
    ``factory(options)`` and returns an object with ``run(cell_context) -> StrategyResult``
    (see ``tlbench.api.Strategy``).
    """


@hookspec
def register_estimators(register):
    """Register transferability estimators (LogME, LEEP, ...).

    Call ``register(EstimatorSpec(...))`` once per estimator. The factory is called as
    ``factory(options)`` and returns an object with
    ``score(features, labels, source_logits) -> float`` (see ``tlbench.api.Estimator``).
    """


@hookspec
def register_commands(cli):
    """Add subcommands to ``tlbench``.

    ``cli`` is a ``click.Group``: decorate functions with ``@cli.command()`` (or call
    ``cli.add_command``). Plugins are loaded, and this hook called, only when the command line
    names a command tlbench does not have itself, or asks for ``tlbench --help``; a built-in
    command keeps its name (the plugin's is ignored with a warning), and between plugins the
    first registration wins. Keep imports inside the command's body so ``tlbench --help`` stays
    fast. A command that needs the plugin host calls ``tlbench.api.load_plugins()``.
    """


@hookspec
def on_cell_finished(record):
    """Called after each cell's record has been durably written; ``record`` is its dict.

    Observers (loggers, dashboards, notifiers) use this. Exceptions raised here are reported
    and ignored: an observer never breaks a run.
    """


@hookspec
def on_run_started(run_dir, suite):
    """Called once when ``tlbench run`` has recorded the run's environment, before any cell runs.

    ``run_dir`` is the run directory (a ``pathlib.Path``; its ``env.json`` is written), ``suite``
    the suite's name. Observers that group a run's cells (experiment trackers) open their parent
    run here. Exceptions raised here are reported and ignored, as for ``on_cell_finished``.
    """


@hookspec
def on_run_finished(run_dir, records, interrupted):
    """Called once when ``tlbench run`` ends, after every record has been written.

    ``records`` are the run's final records (dicts, one per cell of the selection that has one),
    ``interrupted`` is True when a signal stopped the run early. Observers close what
    ``on_run_started`` opened. Exceptions raised here are reported and ignored.
    """
