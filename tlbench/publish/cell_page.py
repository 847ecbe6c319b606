"""The page of one cell (a model x dataset x strategy, every seed of it; ``cell.html.j2``): what
it computed, what it chose, what it cost, where it ran, and which test images it got wrong."""

from __future__ import annotations

import math

from tlbench.publish.gallery import Evidence
from tlbench.publish.html import (
    SiteInfo,
    document,
    esc,
    fields_table,
    flatten,
    link,
    note,
    shown,
    table,
    td,
    when,
)
from tlbench.publish.leaderboard import Score
from tlbench.publish.merge import Entry, versions_of, versions_text
from tlbench.publish.paths import (
    cell_path,
    dataset_path,
    model_path,
    relative,
    run_path,
    suite_index_path,
)
from tlbench.publish.variants import Group, SuiteView
from tlbench.report.records import FROM_SCRATCH

CONFUSION_MAX_CLASSES = 25  # beyond this a matrix is unreadable; list the top confusions
TOP_CONFUSIONS = 20
ENV_FIELDS = ("created_at", "git_revision", "device", "hardware", "packages", "argv")


def cell_page(
    view: SuiteView,
    group: Group,
    score: Score,
    page: str,
    board_page: str,
    site: SiteInfo,
    evidences: dict[str, Evidence],
    reference: Score | None = None,
    ranked: int = 0,
) -> str:
    title = f"{group.model.label} on {group.dataset.label} with {group.strategy.label}"
    crumbs = [
        (view.name, suite_index_path(view.name)),
        (group.strategy.label, board_page),
        (f"{group.model.label} · {group.dataset.label}", None),
    ]
    runs = list(
        {
            r.label: r for e in group.entries for r in [e.run, *(old for _, old in e.superseded)]
        }.values()
    )
    return document(
        page,
        title,
        "",
        site,
        runs,
        crumbs,
        template="cell.html.j2",
        summary=_summary(view, group, score, page, board_page, site.metric, reference, ranked),
        warnings=_variant_notes(group),
        seeds=_seed_table(group, page, site.metric),
        configuration=_configuration(group),
        sections=[
            _seed_section(entry, page, evidences.get(entry.id), site.metric)
            for entry in group.entries
        ],
    )


def _summary(view, group, score, page, board_page, metric, reference, ranked) -> str:
    parts = [f"<strong>{esc(metric)} {esc(score.text)}</strong>"]
    parts.append(
        f"{score.n} of {len(group.entries)} seed{'s' if len(group.entries) != 1 else ''} finished ok"
    )
    if score.rank is not None:
        parts.append(f"rank {score.rank:g} of {ranked} on {esc(group.dataset.label)}")
    if group.role:
        parts.append(esc(group.role))
    if reference is not None and reference.group is group:
        parts.append(
            f"the {FROM_SCRATCH} cell gains on {esc(group.dataset.label)} are measured against"
        )
    elif reference is not None and score.gain is not None:
        ref = reference.group
        target = cell_path(view.name, ref.model.key, ref.dataset.key, ref.strategy.key)
        label = f"{ref.model.label} / {ref.strategy.label}"
        parts.append(f"{score.gain:+.1f} points over {link(page, target, label)} ({FROM_SCRATCH})")
    links = " · ".join(
        [
            link(page, model_path(view.name, group.model.id), f"model {group.model.id}"),
            link(page, dataset_path(view.name, group.dataset.id), f"dataset {group.dataset.id}"),
            link(page, board_page, f"leaderboard ({group.strategy.label})"),
        ]
    )
    return f'<p class="summary">{" · ".join(parts)}</p>\n<p class="links">{links}</p>'


def _variant_notes(group: Group) -> list[str]:
    notes = [
        f"This {v.kind} is {v.label}, a separate variant never averaged with {v.id}: {v.difference}"
        for v in (group.model, group.dataset, group.strategy)
        if v.index > 0
    ]
    for entry in group.entries:
        for record, run in entry.superseded:
            same = run.label == entry.run.label
            notes.append(
                f"Seed {entry.seed}: the record from run {entry.run.label} ({entry.record.get('finished_at', '?')}) "
                f"supersedes {'an earlier attempt in the same run' if same else f'the one from run {run.label}'} "
                f"({record.get('finished_at', '?')}, {record.get('status')})."
            )
    return notes


def _seed_table(group: Group, page: str, metric: str) -> str:
    rows = []
    for entry in group.entries:
        value = entry.metric(metric)
        rows.append(
            [
                td(link(page, f"{page}#seed-{entry.seed}", str(entry.seed)), entry.seed),
                esc(entry.status),
                td("—" if value is None else f"{value:.2f}", value),
                link(page, run_path(entry.run.label), entry.run.label),
                esc(when(entry.record.get("finished_at"))),
                f"<code>{esc(entry.record['config_hash'][:12])}</code>",
                esc(", ".join(old.label for _, old in entry.superseded) or "—"),
            ]
        )
    return table(
        ["seed", "status", metric, "run", "finished", "config hash", "supersedes runs"],
        rows,
        "sortable",
    )


def _configuration(group: Group) -> str:
    record = group.entries[-1].record
    options = record.get("options") or {}
    pairs = []
    for kind, variant in (
        ("model", group.model),
        ("dataset", group.dataset),
        ("strategy", group.strategy),
    ):
        pairs.append((f"{kind}", f"{variant.id} = {record.get(f'{kind}_ref', variant.ref)}"))
        pairs += [(f"{kind}.{k}", v) for k, v in (options.get(kind) or {}).items()]
    split = record.get("split") or {}
    pairs += [
        (f"split.{k}", v)
        for k, v in flatten(split)
        if not k.startswith("hashes.") and k not in ("hash", "seed")
    ]
    pairs.append(("test split hash", (split.get("hashes") or {}).get("test")))
    pairs.append(("recipe versions", versions_text(versions_of(record))))
    return fields_table(pairs)


def _seed_section(entry: Entry, page: str, evidence: Evidence | None, metric: str) -> str:
    record = entry.record
    hparams = record.get("hparams") or {}
    scalars = [(k, v) for k, v in hparams.items() if not _is_sweep(v)]
    sweeps = [(k, v) for k, v in hparams.items() if _is_sweep(v)]
    parts = [f'<section class="seed" id="seed-{entry.seed}">', f"<h2>Seed {entry.seed}</h2>"]
    parts.append(_status(entry, metric))
    parts.append(_evidence(evidence, page))
    cost = flatten(record.get("cost") or {})
    parts.append('<div class="facts">')
    parts.append(f"<div><h3>Chosen hyperparameters</h3>{fields_table(scalars)}</div>")
    parts.append(f"<div><h3>Cost</h3>{fields_table(cost)}</div>")
    parts += [
        f"<div><h3>Tried configurations ({esc(key)}, {len(sweep)})</h3>{sweep_table(sweep, hparams)}</div>"
        for key, sweep in sweeps
    ]
    parts.append("</div>")
    parts += ["<h3>Environment</h3>", _environment(entry, page)]
    parts.append("</section>")
    return "\n".join(parts)


def _status(entry: Entry, metric: str) -> str:
    record = entry.record
    value = entry.metric(metric)
    line = f"<p>Status <strong>{esc(entry.status)}</strong>"
    if value is not None:
        line += f", {esc(metric)} <strong>{value:.2f}</strong>"
    other = {k: v for k, v in (record.get("metrics") or {}).items() if k != metric}
    if other:
        line += " (" + ", ".join(f"{esc(k)} {esc(shown(v))}" for k, v in other.items()) + ")"
    line += ".</p>"
    if record.get("detail"):
        line += note(str(record["detail"]))
    error = record.get("error")
    if isinstance(error, dict):
        line += f'<p class="error">{esc(str(error.get("type", "error")))}: {esc(str(error.get("message", "")))}</p>'
        if error.get("traceback"):
            line += f"<details><summary>Traceback</summary><pre>{esc(str(error['traceback']))}</pre></details>"
    return line


def _is_sweep(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def sweep_table(sweep: list[dict], chosen: dict) -> str:
    """Every configuration tried; the ones matching the chosen hyperparameters are marked."""
    columns = list(dict.fromkeys(key for row in sweep for key in row))
    rows = []
    for row in sweep:
        picked = _matches(row, chosen)
        cells = [td(esc(shown(row.get(c))), _sort_value(row.get(c))) for c in columns]
        cells.append(td("✓ chosen" if picked else "", cls="chosen" if picked else ""))
        rows.append(cells)
    return table([*columns, ""], rows, "sortable sweep")


def _matches(row: dict, chosen: dict) -> bool:
    shared = [k for k in row if k in chosen and not isinstance(chosen[k], list | dict)]
    return bool(shared) and all(_same(row[k], chosen[k]) for k in shared)


def _same(a, b) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _sort_value(value):
    return value if isinstance(value, int | float) and not isinstance(value, bool) else shown(value)


def _environment(entry: Entry, page: str) -> str:
    env = entry.run.env
    pairs = [("run", entry.run.label), ("tlbench", entry.record.get("tlbench_version"))]
    pairs += [("config hash", entry.record["config_hash"])]
    pairs += [(k, entry.record.get(k)) for k in ("started_at", "finished_at")]
    pairs += [(f"worker.{k}", v) for k, v in flatten(entry.record.get("worker") or {})]
    for key in ENV_FIELDS:
        value = env.get(key)
        if isinstance(value, dict):
            pairs += [(f"{key}.{k}", v) for k, v in flatten(value)]
        elif value is not None:
            pairs.append((key, " ".join(map(str, value)) if isinstance(value, list) else value))
    pairs += [(f"plugin {name}", version) for name, version in entry.run.plugins]
    if not env:
        pairs.append(("env.json", "not in the run directory"))
    full = link(page, run_path(entry.run.label), f"run {entry.run.label}")
    hardware = env.get("hardware") or {}
    summary = ", ".join(
        str(part)
        for part in (
            f"run {entry.run.label}",
            f"tlbench {entry.record.get('tlbench_version', '?')}",
            f"git {str(env.get('git_revision') or 'unknown')[:12]}",
            (entry.record.get("cost") or {}).get("device") or env.get("device"),
            hardware.get("platform"),
        )
        if part
    )
    return (
        f"<details><summary>{esc(summary)}</summary>{fields_table(pairs)}</details>"
        f'<p class="note">Everything about the run: {full}.</p>'
    )


def _evidence(evidence: Evidence | None, page: str) -> str:
    parts = ["<h3>Errors on the test split</h3>"]
    if evidence is None or evidence.predictions is None:
        parts.append(
            note(evidence.missing if evidence else "Per-example predictions were not stored.")
        )
        return "\n".join(parts)
    predictions = evidence.predictions
    parts.append(
        note(
            f"{evidence.errors} of {len(predictions)} test items misclassified "
            f"(top1 from the stored predictions: {predictions.top1:.2f})."
        )
    )
    parts += [note(f"Check failed: {text}.", "warning") for text in evidence.caveats]
    parts.append(confusion_html(evidence))
    if evidence.no_gallery:
        parts.append(
            note(
                f"No images: {evidence.no_gallery}. The confusion matrix comes from the stored predictions.",
                "warning",
            )
        )
    elif evidence.mistakes:
        shown_count = len(evidence.mistakes)
        parts.append(
            f"<h4>Most confident mistakes ({shown_count} of {evidence.errors}, lowest probability of the true class first)</h4>"
        )
        parts.append(gallery_html(evidence, page))
    return "\n".join(parts)


def confusion_html(evidence: Evidence) -> str:
    matrix, names = evidence.confusion, evidence.class_names
    classes = evidence.classes
    label = lambda c: names[c] if c < len(names) else str(c)  # noqa: E731
    if classes > CONFUSION_MAX_CLASSES or matrix is None:
        pairs = evidence.confusions[:TOP_CONFUSIONS]
        rows = [[esc(label(t)), esc(label(p)), td(str(n), n)] for n, t, p in pairs]
        return f"<h4>Most frequent confusions ({classes} classes)</h4>" + table(
            ["true class", "predicted as", "test items"], rows, "sortable"
        )
    totals = matrix.sum(axis=1)
    head = "".join(f'<th title="{esc(label(p))}">{esc(label(p)[:10])}</th>' for p in range(classes))
    body = []
    for t in range(classes):
        cells = []
        for p in range(classes):
            count = int(matrix[t, p])
            share = count / totals[t] if totals[t] else 0.0
            kind = "hit" if t == p else "miss"
            style = f' style="--share:{share:.3f}"' if count else ""
            cells.append(f'<td class="{kind}"{style}>{count or ""}</td>')
        body.append(
            f'<tr><th title="{esc(label(t))}">{esc(label(t)[:14])}</th>{"".join(cells)}</tr>'
        )
    return (
        "<h4>Confusion matrix (rows: true class, columns: predicted)</h4>"
        f'<div class="scroll"><table class="confusion"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def gallery_html(evidence: Evidence, page: str) -> str:
    figures = [
        f'<figure><img src="{esc(relative(page, m.image))}" alt="test item {m.index}: {esc(m.true_name)} predicted as {esc(m.pred_name)}">'
        f'<figcaption><span class="pred">{esc(m.pred_name)}</span><br><span class="true">true {esc(m.true_name)}</span><br>'
        f'<span class="prob">p(true) {m.true_prob:.2f}</span></figcaption></figure>'
        for m in evidence.mistakes
    ]
    return f'<div class="gallery">{"".join(figures)}</div>'
