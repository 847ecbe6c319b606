"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot
state, no display needed): accuracy vs trainable parameters with the Pareto front, strategy
bars with confidence intervals, a model x dataset heatmap per strategy, the validation curves of
trained cells, and the layer-transfer curve when a run holds one."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tlbench.errors import UserError
from tlbench.report.curves import chosen_curves
from tlbench.report.layers import (
    CURVE_KEY,
    LAYER_STRATEGY,
    MODE_LABELS,
    MODES,
    layer_curves,
    references,
    scratch_reference,
    with_shared_start,
)
from tlbench.report.tables import summarize

PLOTS = ("accuracy_vs_params", "strategies", "heatmap", "val_curves")
MARKERS = "osD^vP*Xh<>"


@dataclass(frozen=True)
class Plot:
    name: str  # file stem
    caption: str
    png: bytes


def figures(records: pd.DataFrame, metric: str = "top1") -> dict[str, Figure]:
    """The report's figures by file stem, in PLOTS order; ``val_curves`` only when some cell
    recorded validation curves. Layer-transfer cells (one strategy id per point of a curve) get
    their own figure, ``layer_transfer``, instead of crowding the others."""
    curves = layer_curves(records, metric)
    others = records if curves.empty else records[records["strategy_ref"] != LAYER_STRATEGY]
    drawn = {}
    if not others.empty:
        summary = summarize(others, metric)
        drawn = {
            "accuracy_vs_params": accuracy_vs_params(summary, metric),
            "strategies": strategy_bars(summary, metric),
            "heatmap": heatmap(summary, metric),
        }
        trained = chosen_curves(others)
        if not trained.empty:
            drawn["val_curves"] = _val_curves(trained, others=True)
    if not curves.empty:
        drawn["layer_transfer"] = layer_transfer(curves, references(records, metric), metric)
    return drawn


def render_plots(records: pd.DataFrame, metric: str = "top1") -> list[Plot]:
    """Every figure drawn to PNG once, for files and for the HTML page alike."""
    return [
        Plot(name, fig.get_suptitle(), png_bytes(fig))
        for name, fig in figures(records, metric).items()
    ]


def save_plots(plots: list[Plot], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{plot.name}.png" for plot in plots]
    for plot, path in zip(plots, paths, strict=True):
        path.write_bytes(plot.png)
    return paths


def write_plots(records: pd.DataFrame, out_dir: str | Path, metric: str = "top1") -> list[Path]:
    """Write every figure as ``<out_dir>/<name>.png``; returns the paths."""
    return save_plots(render_plots(records, metric), out_dir)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def pareto_front(
    points: pd.DataFrame, x: str = "trainable_params", y: str = "mean"
) -> pd.DataFrame:
    """The points no other point beats with fewer (or as many) parameters, cheapest first."""
    ordered = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    return ordered[ordered[y] > ordered[y].cummax().shift(fill_value=-math.inf)]


def accuracy_vs_params(summary: pd.DataFrame, metric: str = "top1") -> Figure:
    datasets = list(summary["dataset"].unique())
    figure, axes = _grid(len(datasets), width=4.6, height=3.6)
    colors = _colors(summary["model"].unique())
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(summary["strategy"].unique())}
    for ax, dataset in zip(axes, datasets, strict=False):
        part = summary[(summary["dataset"] == dataset) & (summary["n"] > 0)]
        for _, row in part.iterrows():
            ax.errorbar(
                row["trainable_params"],
                row["mean"],
                yerr=_finite(row["ci95"]),
                fmt=markers[row["strategy"]],
                color=colors[row["model"]],
                capsize=2,
            )
        front = pareto_front(part)
        ax.step(
            front["trainable_params"],
            front["mean"],
            where="post",
            color="0.4",
            linestyle="--",
            linewidth=1,
        )
        ax.set_xscale("log")
        missing = int((summary["dataset"] == dataset).sum() - len(part))
        ax.set_title(dataset + (f" ({missing} without a value)" if missing else ""), fontsize=10)
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, which="major", alpha=0.3)
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=m) for m, c in colors.items()
    ]
    handles += [
        Line2D([], [], color="0.3", marker=mk, linestyle="", label=s) for s, mk in markers.items()
    ]
    handles.append(Line2D([], [], color="0.4", linestyle="--", label="Pareto front"))
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(f"{metric} vs trainable parameters (mean ± 95% CI)")
    return figure


def strategy_bars(summary: pd.DataFrame, metric: str = "top1") -> Figure:
    models = list(summary["model"].unique())
    datasets = list(summary["dataset"].unique())
    strategies = list(summary["strategy"].unique())
    figure, axes = _grid(
        len(models), width=max(4.0, 1.4 * len(datasets) * len(strategies) / 2), height=3.4
    )
    colors = _colors(strategies)
    width = 0.8 / len(strategies)
    for ax, model in zip(axes, models, strict=False):
        part = summary[summary["model"] == model].set_index(["dataset", "strategy"])
        for i, strategy in enumerate(strategies):
            for j, dataset in enumerate(datasets):
                x = j + (i - (len(strategies) - 1) / 2) * width
                _bar(ax, x, width, part, (dataset, strategy), colors[strategy])
        ax.set_xticks(range(len(datasets)), datasets, fontsize=8)
        ax.set_title(model, fontsize=10)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, axis="y", alpha=0.3)
    handles = [Line2D([], [], color=c, linewidth=6, label=s) for s, c in colors.items()]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    figure.suptitle(f"Strategies compared ({metric}, mean ± 95% CI; × = no value)")
    return figure


def _bar(ax, x: float, width: float, part: pd.DataFrame, key: tuple, color) -> None:
    if key not in part.index:
        return  # excluded by the suite
    row = part.loc[key]
    if row["n"] == 0:
        ax.plot([x], [0], marker="x", color="red")
        return
    ax.bar(x, row["mean"], width, yerr=_finite(row["ci95"]), color=color, capsize=2)


def heatmap(summary: pd.DataFrame, metric: str = "top1") -> Figure:
    strategies = list(summary["strategy"].unique())
    models = list(summary["model"].unique())
    datasets = list(summary["dataset"].unique())
    figure, axes = _grid(
        len(strategies), width=1.2 * len(datasets) + 2.5, height=0.5 * len(models) + 1.8
    )
    low, high = summary["mean"].min(), summary["mean"].max()
    cmap = colormaps["viridis"].with_extremes(bad="0.85")  # grey: no value
    for ax, strategy in zip(axes, strategies, strict=False):
        part = summary[summary["strategy"] == strategy]
        means = part.pivot(index="model", columns="dataset", values="mean").reindex(
            index=models, columns=datasets
        )
        image = ax.imshow(
            means.to_numpy(dtype=float), cmap=cmap, vmin=low, vmax=high, aspect="auto"
        )
        ax.set_xticks(range(len(datasets)), datasets, fontsize=8, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_title(strategy, fontsize=10)
        for _, row in part.iterrows():
            label = f"{row['mean']:.1f}" if row["n"] else row["status"]
            # Dark text on the light (high) end of viridis and on the grey of missing cells.
            light = not row["n"] or (row["mean"] - low) > 0.6 * (high - low)
            position = (datasets.index(row["dataset"]), models.index(row["model"]))
            ax.text(
                *position,
                label,
                ha="center",
                va="center",
                fontsize=8,
                color="black" if light else "white",
            )
    figure.colorbar(image, ax=axes, label=f"{metric} (%)")
    figure.suptitle(f"{metric} by model and dataset (mean over seeds)")
    return figure


def layer_transfer(curves: pd.DataFrame, probes: pd.DataFrame, metric: str = "top1") -> Figure:
    """Yosinski et al.'s curve, one panel per (model, dataset, curve): accuracy against the
    number of source layer groups kept, frozen and fine-tuned, with the from-scratch (n = 0)
    and linear-probe references as horizontal lines."""
    panels = list(curves.groupby(CURVE_KEY, sort=False))
    figure, axes = _grid(len(panels), width=4.6, height=3.4)
    colors = {"frozen": "tab:blue", "finetune": "tab:orange"}
    probes = probes.set_index(["model", "dataset"])
    for ax, ((model, dataset, curve), part) in zip(axes, panels, strict=False):
        part = with_shared_start(part)
        for mode in MODES:
            line = part[(part["mode"] == mode) & (part["n"] > 0)]
            if not line.empty:
                ax.errorbar(
                    line["keep"],
                    line["mean"],
                    yerr=[_finite(v) for v in line["ci95"]],
                    marker="o" if mode == "frozen" else "s",
                    color=colors[mode],
                    capsize=2,
                )
        scratch = scratch_reference(part)
        if scratch is not None:
            ax.axhline(scratch["mean"], color="0.35", linestyle=":", linewidth=1)
        if (model, dataset) in probes.index:
            ax.axhline(probes.loc[(model, dataset), "mean"], color="tab:green", linestyle="--")
        ax.set_xticks(sorted(part["keep"].unique()))
        title = f"{model} / {dataset}" + (f" ({curve})" if curve != "layer-transfer" else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("source layer groups kept (n)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(True, alpha=0.3)
    handles = [
        Line2D([], [], color=colors[m], marker="o" if m == "frozen" else "s", label=MODE_LABELS[m])
        for m in MODES
    ]
    handles += [
        Line2D([], [], color="0.35", linestyle=":", label="from scratch (n = 0)"),
        Line2D([], [], color="tab:green", linestyle="--", label="linear probe"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8)
    figure.suptitle(f"Layer transfer: {metric} (mean ± 95% interval over test items and seeds)")
    return figure


def val_curves(
    records: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    others: bool = True,
) -> Figure:
    """Validation top-1 per epoch of each trained cell's chosen candidate (``hparams.sweep``).

    One panel per (dataset, strategy), laid out strategy x dataset, or one per dataset when
    each dataset has a single strategy (a suite pairing each size with its own schedule). One
    colour per model: a thin line per seed, a thick one for their mean (dotted once some seeds
    had stopped), a dot at each seed's best epoch, a dashed vertical line at the model's epoch
    budget, ``>`` at the end of a seed still improving when the budget ran out (under-trained).
    ``others`` draws the sweep's other candidates faintly (a pruned one ends at its cut).
    ``models`` / ``datasets`` / ``strategies`` keep only those ids, in the order given. Raises
    ``UserError`` when no cell left recorded a curve.
    """
    curves = chosen_curves(records)
    for column, wanted in (("model", models), ("dataset", datasets), ("strategy", strategies)):
        if wanted is None:
            continue
        present = list(dict.fromkeys(curves[column]))
        unknown = [name for name in wanted if name not in present]
        if unknown:
            raise UserError(
                f"val_curves: no validation curves for {column} {', '.join(map(repr, unknown))}; "
                f"recorded: {', '.join(present) or 'none'}"
            )
        curves = curves[curves[column].isin(wanted)]
        order = {name: i for i, name in enumerate(wanted)}
        curves = curves.sort_values(column, key=lambda c: c.map(order), kind="stable")
    if curves.empty:
        raise UserError(
            "val_curves: no trained cell recorded validation curves (hparams.sweep[].val_curve)"
        )
    return _val_curves(curves, others)


def _val_curves(curves: pd.DataFrame, others: bool) -> Figure:
    panels = list(dict.fromkeys(zip(curves["dataset"], curves["strategy"], strict=True)))
    datasets = list(dict.fromkeys(d for d, _ in panels))
    strategies = list(dict.fromkeys(s for _, s in panels))
    if len(panels) == len(datasets) or len(strategies) == 1 or len(datasets) == 1:
        columns = 2 if len(panels) == 4 else 3
        figure, axes = _grid(len(panels), width=4.6, height=3.4, most_columns=columns)
        places = dict(zip(panels, axes, strict=False))
    else:  # a strategy per row, a dataset per column; a pair the suite excluded stays blank
        figure = Figure(
            figsize=(4.6 * len(datasets) + 1.5, 3.4 * len(strategies) + 0.6),
            layout="constrained",
        )
        grid = figure.subplots(len(strategies), len(datasets), squeeze=False)
        places = {
            (d, s): grid[i][j] for i, s in enumerate(strategies) for j, d in enumerate(datasets)
        }
        for key, ax in places.items():
            ax.set_visible(key in panels)
    colors = _colors(dict.fromkeys(curves["model"]))
    for (dataset, strategy), ax in places.items():
        part = curves[(curves["dataset"] == dataset) & (curves["strategy"] == strategy)]
        if part.empty:
            continue
        for model, runs in part.groupby("model", sort=False):
            _model_curves(ax, runs, colors[model], others)
        rising = int(part["still_improving"].sum())
        note = f"\n{rising} of {len(part)} cells still improving at the budget" if rising else ""
        ax.set_title(f"{dataset} / {strategy}{note}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    figure.legend(
        handles=_curve_legend(curves, colors, others), loc="outside right upper", fontsize=8
    )
    figure.suptitle("Validation top-1 per epoch of each cell's chosen candidate")
    return figure


def _curve_legend(curves: pd.DataFrame, colors: dict, others: bool) -> list[Line2D]:
    """The models' colours, then only the marks some panel shows."""
    lengths = curves.groupby(["dataset", "strategy", "model"], sort=False)["curve"].agg(
        lambda c: len({len(curve) for curve in c})
    )
    shown: list[tuple[bool, dict[str, Any], str]] = [
        (True, {"linewidth": 2.2}, "mean over seeds"),
        (
            bool((lengths > 1).any()),
            {"linewidth": 1.5, "linestyle": ":"},
            "mean after some seeds stopped",
        ),
        (True, {"linewidth": 0.8, "alpha": 0.5}, "one seed"),
        (True, {"marker": "o", "markersize": 4, "linestyle": ""}, "best epoch"),
        (
            bool(curves["budget_epochs"].notna().any()),
            {"linestyle": "--", "linewidth": 1},
            "epoch budget",
        ),
        (
            bool(curves["still_improving"].any()),
            {"marker": ">", "markersize": 7, "markeredgecolor": "black", "linestyle": ""},
            "still improving at the budget",
        ),
        (
            others and any(len(o) for o in curves["others"]),
            {"linewidth": 0.8, "alpha": 0.2},
            "other candidates\n(pruned: end at the cut)",
        ),
    ]
    handles = [Line2D([], [], color=c, linewidth=2.2, label=m) for m, c in colors.items()]
    return handles + [
        Line2D([], [], color="0.3", label=label, **style) for on, style, label in shown if on
    ]


def _model_curves(ax, runs: pd.DataFrame, color, others: bool) -> None:
    """One model's seeds in one panel (see ``val_curves``)."""
    if others:
        for candidates in runs["others"]:
            for other in candidates:
                curve = other["curve"]
                ax.plot(_epochs(curve), curve, color=color, alpha=0.2, linewidth=0.8)
    for _, run in runs.iterrows():
        curve, best = run["curve"], run["best_epoch"]
        ax.plot(_epochs(curve), curve, color=color, alpha=0.5, linewidth=0.8)
        ax.plot([best], [curve[best - 1]], marker="o", markersize=4, color=color)
        if run["still_improving"]:
            ax.plot(
                [len(curve)],
                [curve[-1]],
                marker=">",
                markersize=7,
                color=color,
                markeredgecolor="black",
            )
    lengths = [len(curve) for curve in runs["curve"]]
    mean = [
        sum(curve[i] for curve in runs["curve"] if len(curve) > i)
        / sum(length > i for length in lengths)
        for i in range(max(lengths))
    ]
    common = min(lengths)  # every seed still trains up to here
    ax.plot(_epochs(mean[:common]), mean[:common], color=color, linewidth=2.2)
    if common < len(mean):
        tail = range(common, len(mean) + 1)
        ax.plot(tail, mean[common - 1 :], color=color, linewidth=1.5, linestyle=":")
    for budget in dict.fromkeys(runs["budget_epochs"].dropna()):
        ax.axvline(budget, color=color, linestyle="--", linewidth=1)


def _epochs(curve: list) -> range:
    return range(1, len(curve) + 1)


def _grid(panels: int, width: float, height: float, most_columns: int = 3) -> tuple[Figure, list]:
    columns = min(most_columns, max(1, panels))
    rows = math.ceil(max(1, panels) / columns)
    figure = Figure(figsize=(width * columns + 1.5, height * rows + 0.6), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, axes[: max(1, panels)]


def _colors(names) -> dict:
    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def _finite(value: float) -> float:
    return 0.0 if pd.isna(value) else float(value)
