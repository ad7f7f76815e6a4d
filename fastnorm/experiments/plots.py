"""The notebook's figures, drawn from an experiment record (see runner.run_experiment).

Figures are built on matplotlib's object API with the Agg canvas, so no
display and no pyplot state are involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .configs import ran_quick

NORM_TITLES = {"batchnorm": "Batch Normalization", "layernorm": "Layer Normalization"}
CONV_LABELS = {None: "baseline", "spatial_batchnorm": "spatial batchnorm", "groupnorm": "groupnorm"}


def primary_run(record: dict) -> dict:
    """The run the figures and report show: the compiled kernels' if there is one."""
    runs = record["runs"]
    return runs["fast"] if "fast" in runs else next(iter(runs.values()))


def plot_experiment(record: dict, path: Path) -> Path:
    """Draw the experiment's figure into path (PNG)."""
    draw = {"bn-vs-baseline": _bn_vs_baseline, "weight-scale": _weight_scale,
            "batch-size": _batch_size, "layernorm-batch-size": _batch_size,
            "convnet-norms": _convnet_norms}[record["experiment"]]
    fig = draw(record)
    FigureCanvasAgg(fig)
    fig.suptitle(_caption(record), fontsize=10)
    fig.savefig(path, format="png", dpi=72)
    return Path(path)


def _caption(record: dict) -> str:
    s = record["settings"]
    quick = ", --quick" if ran_quick(record) else ""
    return (f"{record['experiment']}: {s['dataset']}, {s['num_train']} training samples, "
            f"seed {s['seed']}, {primary_run(record)['kernels']} kernels{quick}")


def _values(history) -> np.ndarray:
    """A history as floats, with missing (non-finite, stored as null) entries as NaN."""
    return np.array([np.nan if v is None else v for v in history], dtype=float)


def _split(models: list[dict]) -> tuple[dict, list[dict]]:
    baseline = next(m for m in models if m["normalization"] is None)
    return baseline, [m for m in models if m["normalization"] is not None]


def _history_panel(ax, title, xlabel, ylabel, baseline, normed, key, bl_marker, norm_marker,
                   legend_loc="lower center"):
    """One panel of the notebook's plot_training_history: normalized curves, then the baseline."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for model in normed:
        ax.plot(_values(model[key]), norm_marker, label=model["label"])
    ax.plot(_values(baseline[key]), bl_marker, label=baseline["label"])
    ax.legend(loc=legend_loc, ncol=len(normed) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations and epochs are whole


def _bn_vs_baseline(record: dict) -> Figure:
    baseline, normed = _split(primary_run(record)["models"])
    fig = Figure(figsize=(15, 15), layout="constrained")
    axes = fig.subplots(3, 1)
    # the notebook's layout; the loss legend moves up, where falling losses leave room
    panels = [("Training loss", "Iteration", "Loss", "loss_history", "o", "upper right"),
              ("Training accuracy", "Epoch", "Accuracy", "train_acc_history", "-o", "lower center"),
              ("Validation accuracy", "Epoch", "Accuracy", "val_acc_history", "-o", "lower center")]
    for ax, (title, xlabel, ylabel, key, marker, loc) in zip(axes, panels):
        _history_panel(ax, title, xlabel, ylabel, baseline, normed, key, marker, marker, loc)
    return fig


def _batch_size(record: dict) -> Figure:
    baseline, normed = _split(primary_run(record)["models"])
    kind = NORM_TITLES[record["settings"]["normalization"]]
    fig = Figure(figsize=(15, 10), layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, (title, key) in zip(axes, [("Training accuracy", "train_acc_history"),
                                       ("Validation accuracy", "val_acc_history")]):
        _history_panel(ax, f"{title} ({kind})", "Epoch", "Accuracy", baseline, normed, key, "-^", "-o")
    return fig


def weight_scale_curves(record: dict) -> dict:
    """Per weight scale: best val accuracy, best train accuracy, final loss, for baseline and norm."""
    models = primary_run(record)["models"]
    curves = {}
    for name, normalization in (("baseline", None), ("batchnorm", "batchnorm")):
        chosen = [m for m in models if m["normalization"] == normalization]
        curves[name] = {key: _values([m[key] for m in chosen])
                        for key in ("weight_scale", "best_val_acc", "best_train_acc", "final_train_loss")}
    return curves


def _weight_scale(record: dict) -> Figure:
    curves = weight_scale_curves(record)
    fig = Figure(figsize=(15, 15), layout="constrained")
    axes = fig.subplots(3, 1)
    panels = [("Best val accuracy", "Best val accuracy", "best_val_acc", dict(ncol=2, loc="lower right")),
              ("Best train accuracy", "Best training accuracy", "best_train_acc", {}),
              ("Final training loss", "Final training loss", "final_train_loss", {})]
    for ax, (title, ylabel, key, legend) in zip(axes, panels):
        ax.set_title(f"{title} vs weight initialization scale")
        ax.set_xlabel("Weight initialization scale")
        ax.set_ylabel(ylabel)
        for name, curve in curves.items():
            ax.semilogx(curve["weight_scale"], curve[key], "-o", label=name)
        ax.legend(**legend)
    _clip_loss_axis(axes[2], curves)
    return fig


def _clip_loss_axis(ax, curves: dict) -> None:
    """The notebook clips the loss axis at 3.5 so diverged baselines don't hide the rest;
    its floor of 1.0 is lowered when this run's losses go below it."""
    losses = np.concatenate([c["final_train_loss"] for c in curves.values()])
    finite = losses[np.isfinite(losses)]
    low = min(1.0, float(finite.min()) * 0.9) if finite.size else 1.0
    ax.set_ylim(low, 3.5)


def convnet_curves(record: dict) -> dict:
    """Per normalization of a convnet-norms record: its model at the shared setting
    ('curve'), its weight-scale sweep ('by_scale') and its batch-size sweep ('by_batch'),
    each sweep sorted."""
    s = record["settings"]
    models = primary_run(record)["models"]
    curves = {}
    for norm in s["normalizations"]:
        mine = [m for m in models if m["normalization"] == norm]
        curves[norm] = {
            "curve": next(m for m in mine if m["weight_scale"] == s["weight_scale"]
                          and m["batch_size"] == s["batch_size"]),
            "by_scale": sorted((m for m in mine if m["batch_size"] == s["batch_size"]),
                               key=lambda m: m["weight_scale"]),
            "by_batch": sorted((m for m in mine if m["weight_scale"] == s["weight_scale"]),
                               key=lambda m: m["batch_size"]),
        }
    return curves


def final(history) -> float:
    """The last entry of a history (NaN when empty or missing)."""
    values = _values(history)
    return float(values[-1]) if values.size else float("nan")


def _convnet_norms(record: dict) -> Figure:
    s = record["settings"]
    curves = convnet_curves(record)
    fig = Figure(figsize=(15, 12), layout="constrained")
    (loss_ax, acc_ax), (scale_ax, batch_ax) = fig.subplots(2, 2)
    shared = f"weight scale {s['weight_scale']:.1e}, batch {s['batch_size']}"
    loss_ax.set(title=f"Training loss ({shared})", xlabel="Iteration", ylabel="Loss")
    acc_ax.set(title=f"Accuracy ({shared}): training solid, validation dashed", xlabel="Epoch",
               ylabel="Accuracy")
    scale_ax.set(title=f"Final accuracy vs weight initialization scale (batch {s['batch_size']})",
                 xlabel="Weight initialization scale", ylabel="Final accuracy")
    batch_ax.set(title=f"Final accuracy vs batch size (weight scale {s['weight_scale']:.1e})",
                 xlabel="Batch size", ylabel="Final accuracy")
    for k, (norm, c) in enumerate(curves.items()):
        color, label = f"C{k}", CONV_LABELS.get(norm, norm)
        if norm == "groupnorm":
            label += f" (G={s['G']})"
        loss_ax.plot(_values(c["curve"]["loss_history"]), "o", color=color, markersize=3, label=label)
        acc_ax.plot(_values(c["curve"]["train_acc_history"]), "-o", color=color, label=f"{label}, training")
        acc_ax.plot(_values(c["curve"]["val_acc_history"]), "--^", color=color, label=f"{label}, validation")
        for ax, key, runs in ((scale_ax, "weight_scale", c["by_scale"]), (batch_ax, "batch_size", c["by_batch"])):
            x = [m[key] for m in runs]
            ax.semilogx(x, [final(m["val_acc_history"]) for m in runs], "--^", color=color,
                        label=f"{label}, validation")
            ax.semilogx(x, [final(m["train_acc_history"]) for m in runs], "-o", color=color,
                        label=f"{label}, training")
    batch_ax.minorticks_off()
    batch_ax.set_xticks(s["batch_sizes"], [str(b) for b in s["batch_sizes"]])
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, acc_ax, scale_ax, batch_ax):
        ax.legend(fontsize=8)
    return fig
