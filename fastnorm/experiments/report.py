"""The Markdown report: the figures of the run and what this run's numbers show.

Every number and every comparison word below is computed from the records;
the sections only supply the sentence frames. Records come from the JSON files
in the output folder (results.load_records).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .configs import ran_quick
from .plots import CONV_LABELS, convnet_curves, final, primary_run

DRIFT = 1e-3  # loss difference at which two runs count as apart
TRAINS_FACTOR = 2  # a model "trains" when its best training accuracy reaches twice chance
TITLES = {
    "bn-vs-baseline": "Batch normalization vs. no normalization",
    "weight-scale": "Batch normalization and weight initialization",
    "batch-size": "Batch normalization and batch size",
    "layernorm-batch-size": "Layer normalization and batch size",
    "convnet-norms": "A ConvNet without normalization, with spatial batch norm and with group norm",
}


def write_report(records: list[dict], out_dir: Path, name: str = "report.md") -> Path:
    path = Path(out_dir) / name
    path.write_text(render_report(records))
    return path


def render_report(records: list[dict]) -> str:
    lines = ["# fastnorm: the batch-normalization notebook's experiments", ""]
    lines += _overview(records) + _timing(records)
    by_name = {r["experiment"]: r for r in records}
    for record in records:
        lines += _section(record, by_name)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ helpers

def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _acc(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _signed(value: float) -> str:
    return f"{value:+.3f}" if np.isfinite(value) else "n/a"


def _compare(a: float, b: float) -> str:
    """The comparison that the numbers, as rounded in the report, support."""
    if round(a, 3) == round(b, 3):
        return "the same as"
    return "higher than" if a > b else "lower than"


def _scale(value: float) -> str:
    return f"{value:.1e}"


def _models(record: dict) -> tuple[list[dict], list[dict]]:
    """The primary run's un-normalized and normalized models."""
    models = primary_run(record)["models"]
    return [m for m in models if m["normalization"] is None], [m for m in models if m["normalization"]]


def _at(history: list, index: int) -> float:
    """history[index] as a float; NaN where a stopped run has no such entry."""
    return _num(history[index]) if index < len(history) else float("nan")


def _last(history: list) -> float:
    return _num(history[-1]) if history else float("nan")


# ------------------------------------------------------------------ overview and timing

def _overview(records: list[dict]) -> list[str]:
    if not records:
        return ["No experiment records were found.", ""]
    env = records[0]["environment"]
    return [f"Written {time.strftime('%Y-%m-%d %H:%M')} from the {len(records)} experiment record(s) "
            f"in this folder. {_data_sentence(records)} NumPy {env['numpy']}; compiled kernels with "
            f"OpenMP {'on' if env['openmp'] else 'off'}, {env['kernel_threads']} thread(s); BLAS "
            f"limited to {env['blas_threads']} thread(s). Each model starts from the seed, so the "
            f"baseline and the normalized nets of an experiment share their initial weights and "
            f"minibatch order.", ""]


def _data_sentence(records: list[dict]) -> str:
    keys = ("dataset", "input_dim", "num_classes", "num_val", "seed")
    distinct = {tuple(r["settings"][k] for k in keys) for r in records}
    if len(distinct) > 1:
        return "The records differ in dataset or seed: each section states its own."
    s = records[0]["settings"]
    return (f"Dataset: {s['dataset']} (input dimension {s['input_dim']}, {s['num_classes']} classes, "
            f"{s['num_val']} validation samples); seed {s['seed']}.")


def _timing(records: list[dict]) -> list[str]:
    lines = ["## Wall time", "",
             "| experiment | settings | models | epochs | compiled kernels (s) | NumPy reference (s) "
             "| speed-up, all models | speed-up, normalized models | elapsed, all included (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        runs, s = r["runs"], r["settings"]
        times = [f"{runs[k]['wall_time_s']:.1f}" if k in runs else "-" for k in ("fast", "reference")]
        ratios = ["-", "-"]
        if "-" not in times:
            ratios = [f"{_ratio(runs, lambda m: True):.2f}x", f"{_ratio(runs, _normalized):.2f}x"]
        lines.append(f"| {r['experiment']} | {'--quick' if ran_quick(r) else 'notebook'} "
                     f"| {len(primary_run(r)['models'])} | {s['num_epochs']} "
                     f"| {times[0]} | {times[1]} | {ratios[0]} | {ratios[1]} | {r['elapsed_s']:.1f} |")
    return lines + ["", "Kernel columns: training time summed over the experiment's models. Speed-up: "
                    "reference time over compiled time. Elapsed: the whole experiment in its latest "
                    "invocation, warm-up and every kernel set it ran included.", ""] + _speedup(records)


def _normalized(model: dict) -> bool:
    return model["normalization"] is not None


def _seconds(models: list[dict], chosen) -> float:
    return sum(m["time_s"] for m in models if chosen(m))


def _ratio(runs: dict, chosen) -> float:
    """Reference over compiled training time of the chosen models."""
    return _seconds(runs["reference"]["models"], chosen) / _seconds(runs["fast"]["models"], chosen)


def _speedup(records: list[dict]) -> list[str]:
    """The compiled kernels' end-to-end speed-up, from records that hold both kernel runs."""
    lines = []
    for r in records:
        runs = r["runs"]
        if not {"fast", "reference"} <= runs.keys():
            continue
        fast, ref = runs["fast"]["models"], runs["reference"]["models"]
        n_norm = sum(map(_normalized, fast))
        which = "the normalized model" if n_norm == 1 else f"the {n_norm} normalized models"
        sentences = [f"**{r['experiment']}** (timed {_how_timed(runs)}): {which} "
                     f"trained in {_seconds(fast, _normalized):.2f} s on the compiled kernels and "
                     f"{_seconds(ref, _normalized):.2f} s on the NumPy reference, "
                     f"{_ratio(runs, _normalized):.2f}x end to end; all {len(fast)} models "
                     f"{_ratio(runs, lambda m: True):.2f}x.", _bound(fast, ref), _agreement(fast, ref)]
        lines.append(" ".join(text for text in sentences if text))
        lines.append("")
    if not lines:
        lines = ["No experiment here was run on both kernel sets; `--kernels both` measures the "
                 "compiled kernels' speed-up over the NumPy reference.", ""]
    return lines


def _how_timed(runs: dict) -> str:
    fast, ref = runs["fast"], runs["reference"]
    how = "in the same run, model by model in turn" if fast["run_id"] == ref["run_id"] else "in two separate runs"
    repeats = sorted({fast.get("repeat", 1), ref.get("repeat", 1)})
    return how + (f", fastest of {' and '.join(map(str, repeats))} repeats" if repeats != [1] else "")


def _bound(fast: list[dict], ref: list[dict]) -> str:
    """What limits the speed-up: the un-normalized baseline at the same batch size does
    all the work but normalization, identically on both kernel sets (so the gap between
    its two times is timing noise)."""
    baselines = [i for i, m in enumerate(ref) if not _normalized(m)]
    if len(baselines) != 1:
        return ""
    i = baselines[0]
    b_fast, b_ref = fast[i]["time_s"], ref[i]["time_s"]
    text = (f"The un-normalized baseline does identical work on both and took {b_fast:.2f} s and "
            f"{b_ref:.2f} s: gaps of that size are timing noise.")
    same = [j for j, m in enumerate(ref) if _normalized(m) and m["batch_size"] == ref[i]["batch_size"]]
    base = (b_fast + b_ref) / 2
    norm_fast, norm_ref = (np.mean([run[j]["time_s"] for j in same]) if same else np.nan for run in (fast, ref))
    if not same or min(norm_fast, norm_ref) <= base:
        return text
    return text + (f" Against it, normalization cost {norm_ref - base:.2f} s per model on the reference "
                   f"and {norm_fast - base:.2f} s on the compiled kernels (the normalization itself "
                   f"{(norm_ref - base) / (norm_fast - base):.2f}x faster); even free normalization "
                   f"could not make these models more than {norm_ref / base:.2f}x faster end to end.")


def _agreement(fast: list[dict], ref: list[dict]) -> str:
    """How far the two runs' training losses agree: float32 rounding differences
    between the kernels grow as training goes on."""
    pairs = [(np.array([_num(v) for v in f["loss_history"]]), np.array([_num(v) for v in r["loss_history"]]))
             for f, r in zip(fast, ref) if f["normalization"] and f["loss_history"] and r["loss_history"]]
    if not pairs:
        return ""
    first = max(abs(a[0] - b[0]) for a, b in pairs)
    n = [min(len(a), len(b)) for a, b in pairs]
    gaps = [np.abs(a[:k] - b[:k]) for (a, b), k in zip(pairs, n)]
    apart = [int(np.argmax(g > DRIFT)) + 1 for g in gaps if np.any(g > DRIFT)]
    start = "the same loss" if first <= 1e-5 else "different losses"
    text = (f"Both runs start from {start} (first iterations differ by {first:.1e}) and the "
            f"un-normalized baselines' losses are {_same_word(fast, ref)} on both")
    if not apart:
        return text + f"; the normalized models' losses stay within {DRIFT:g} throughout."
    return (text + f"; float32 rounding differences then grow: the normalized models' losses first differ by "
            f"more than {DRIFT:g} at iteration {min(apart)}, by at most {max(g.max() for g in gaps):.2f} "
            f"over the run.")


def _same_word(fast: list[dict], ref: list[dict]) -> str:
    same = all(f["loss_history"] == r["loss_history"] for f, r in zip(fast, ref) if not f["normalization"])
    return "identical" if same else "not identical"


# ------------------------------------------------------------------ sections

def _section(record: dict, by_name: dict) -> list[str]:
    name = record["experiment"]
    s = record["settings"]
    lines = [f"## {TITLES[name]} (`{name}`)", "", f"![{name}]({name}.png)", "",
             f"{_architecture(s)}, {s['update_rule']} with learning rate "
             f"{s['learning_rate']:.2g}, {s['num_epochs']} epochs on {s['num_train']} training samples "
             f"of {s['dataset']}, seed {s['seed']} "
             f"({'--quick settings' if ran_quick(record) else 'the notebook settings'}).", ""]
    body = {"bn-vs-baseline": _bn_vs_baseline, "weight-scale": _weight_scale,
            "batch-size": _batch_size, "layernorm-batch-size": _batch_size,
            "convnet-norms": _convnet_norms}[name]
    return lines + body(record, by_name) + [""]


def _architecture(s: dict) -> str:
    if "num_filters" not in s:
        return f"Hidden layers {list(s['hidden_dims'])}"
    k = s["filter_size"]
    return (f"ConvNet: {len(s['num_filters'])} stage(s) of {list(s['num_filters'])} filters ({k}x{k}, stride 1, "
            f"padded to keep the size) each with a 2x2 max pool, then a hidden layer of {s['hidden_dim']}; "
            f"group norm with G={s['G']} (its hidden layer with layer norm), spatial batch norm's hidden "
            f"layer with batch norm")


def _bn_vs_baseline(record: dict, by_name: dict) -> list[str]:
    (base,), (bn,) = _models(record)
    epochs = len(bn["train_acc_history"]) - 1
    b_tr, n_tr = _last(base["train_acc_history"]), _last(bn["train_acc_history"])
    b_val, n_val = _last(base["val_acc_history"]), _last(bn["val_acc_history"])
    lines = [f"- After epoch {epochs} the batchnorm net's training accuracy is {_acc(n_tr)}, "
             f"{_compare(n_tr, b_tr)} the baseline's {_acc(b_tr)} ({_signed(n_tr - b_tr)}); its validation "
             f"accuracy is {_acc(n_val)} against {_acc(b_val)} ({_signed(n_val - b_val)}).",
             f"- Best validation accuracy: {_acc(bn['best_val_acc'])} with batchnorm, "
             f"{_acc(base['best_val_acc'])} without.",
             f"- Mean training loss over the last {min(100, len(bn['loss_history']))} iterations: "
             f"{_num(bn['final_train_loss']):.3f} with batchnorm, {_num(base['final_train_loss']):.3f} without."]
    if epochs > 1:
        b_1, n_1 = (_at(m["train_acc_history"], 1) for m in (base, bn))
        lines.append(f"- After the first epoch the training accuracy is {_acc(n_1)} with batchnorm and "
                     f"{_acc(b_1)} without ({_signed(n_1 - b_1)}).")
    reach = _first_epoch_reaching(bn["train_acc_history"], b_tr)
    if reach is not None:
        lines.append(f"- The batchnorm net first reaches the baseline's final training accuracy at epoch "
                     f"{reach} of {epochs}.")
    else:
        lines.append("- The batchnorm net never reaches the baseline's final training accuracy.")
    return lines


def _first_epoch_reaching(history: list, level: float) -> int | None:
    for epoch, value in enumerate(history):
        if value is not None and value >= level:
            return epoch
    return None


def _weight_scale(record: dict, by_name: dict) -> list[str]:
    base, bn = _models(record)
    chance = 1 / record["settings"]["num_classes"]
    level = TRAINS_FACTOR * chance
    iterations = max(len(m["loss_history"]) for m in bn)
    lines = [f"A model counts as training when its best training accuracy reaches {level:.2f} "
             f"({TRAINS_FACTOR}x chance), over {len(bn)} weight scales from {_scale(bn[0]['weight_scale'])} "
             f"to {_scale(bn[-1]['weight_scale'])}. The final training loss is the mean over the last "
             f"{min(100, iterations)} of {iterations} iterations.", ""]
    for label, models in (("baseline", base), ("batchnorm", bn)):
        lines.append(f"- {label}: " + _trains_sentence(models, level))
    for label, models in (("baseline", base), ("batchnorm", bn)):
        lines.append(f"- {label}: best validation accuracy {_best_at(models)}; "
                     + _diverged_sentence(models))
    return lines


def _trains_sentence(models: list[dict], level: float) -> str:
    training = [m["weight_scale"] for m in models if _num(m["best_train_acc"]) >= level]
    if not training:
        return f"trains at none of the {len(models)} weight scales."
    where = (f"from {_scale(training[0])} to {_scale(training[-1])}"
             if len(training) > 1 and _contiguous(models, training)
             else "at " + ", ".join(_scale(t) for t in training))
    return f"trains at {len(training)} of {len(models)} weight scales, {where}."


def _contiguous(models: list[dict], chosen: list[float]) -> bool:
    scales = [m["weight_scale"] for m in models]
    start = scales.index(chosen[0])
    return scales[start:start + len(chosen)] == chosen


def _best_at(models: list[dict]) -> str:
    accs = np.array([_num(m["best_val_acc"]) for m in models])
    if np.all(np.isnan(accs)):
        return "not measured (every run stopped before its first check)"
    i = int(np.nanargmax(accs))
    return (f"{_acc(accs[i])} at weight scale {_scale(models[i]['weight_scale'])}, ranging from "
            f"{_acc(np.nanmin(accs))} to {_acc(accs[i])} over the sweep")


def _diverged_sentence(models: list[dict]) -> str:
    diverged = [_scale(m["weight_scale"]) for m in models if m["diverged"]]
    if not diverged:
        return "the loss stayed finite at every scale."
    return f"training stopped on a non-finite loss at weight scale {', '.join(diverged)}."


def _batch_size(record: dict, by_name: dict) -> list[str]:
    (base,), normed = _models(record)
    kind = record["settings"]["normalization"]
    lines = []
    for key, what in (("val_acc_history", "validation"), ("train_acc_history", "training")):
        values = [_last(m[key]) for m in normed]
        per_size = ", ".join(f"{_acc(v)} at batch {m['batch_size']}" for v, m in zip(values, normed))
        lines.append(f"- Final {what} accuracy with {kind}: {per_size} ({_trend(normed, values)}, "
                     f"spread {max(values) - min(values):.3f}); baseline at batch {base['batch_size']}: "
                     f"{_acc(_last(base[key]))}.")
    lines.append(f"- One validation sample is {1 / record['settings']['num_val']:.3f} of validation accuracy.")
    small = min(normed, key=lambda m: m["batch_size"])
    small_val, base_val = _last(small["val_acc_history"]), _last(base["val_acc_history"])
    lines.append(f"- At the smallest batch ({small['batch_size']}) {kind} ends with validation accuracy "
                 f"{_acc(small_val)}, {_compare(small_val, base_val)} the un-normalized baseline's "
                 f"{_acc(base_val)} at batch {base['batch_size']}.")
    if record["experiment"] == "layernorm-batch-size" and "batch-size" in by_name:
        lines.append(_bn_vs_ln_sentence(by_name["batch-size"], record))
    return lines


def _trend(models: list[dict], values: list[float]) -> str:
    order = np.argsort([m["batch_size"] for m in models])
    ordered = np.round(np.array(values)[order], 3)
    steps = np.diff(ordered)
    if np.all(steps > 0):
        return "rising with batch size"
    if np.all(steps < 0):
        return "falling with batch size"
    if np.all(steps == 0):
        return "equal at every batch size"
    return "not monotonic in batch size"


def _spread(record: dict) -> float:
    values = [_last(m["val_acc_history"]) for m in _models(record)[1]]
    return max(values) - min(values)


def _bn_vs_ln_sentence(bn_record: dict, ln_record: dict) -> str:
    bn, ln = round(_spread(bn_record), 3), round(_spread(ln_record), 3)
    if ln == bn:
        how = "as much on the batch size as"
    else:
        how = f"{'more' if ln > bn else 'less'} on the batch size than"
    return (f"- Across batch sizes the final validation accuracy spreads over {bn:.3f} with batchnorm "
            f"and {ln:.3f} with layernorm: in this run layernorm's result depends {how} batchnorm's.")


def _convnet_norms(record: dict, by_name: dict) -> list[str]:
    s = record["settings"]
    curves = convnet_curves(record)
    names = {norm: CONV_LABELS.get(norm, str(norm)) for norm in curves}
    base = curves.get(None)
    lines = []
    for key, what in (("val_acc_history", "validation"), ("train_acc_history", "training")):
        values = {norm: final(c["curve"][key]) for norm, c in curves.items()}
        parts = [f"{_acc(v)} {'without normalization' if norm is None else 'with ' + names[norm]}"
                 + (f" ({_signed(v - values[None])})" if norm is not None and base else "")
                 for norm, v in values.items()]
        lines.append(f"- At weight scale {_scale(s['weight_scale'])} and batch {s['batch_size']} the final "
                     f"{what} accuracy is {', '.join(parts)}.")
    if s["num_epochs"] > 1:
        lines.append("- After the first epoch the training accuracy is " + ", ".join(
            f"{_acc(_at(c['curve']['train_acc_history'], 1))} ({names[norm]})" for norm, c in curves.items()) + ".")
    iterations = max(len(c["curve"]["loss_history"]) for c in curves.values())
    lines.append(f"- Mean training loss over the last {min(100, iterations)} iterations: " + ", ".join(
        f"{_num(c['curve']['final_train_loss']):.3f} ({names[norm]})" for norm, c in curves.items()) + ".")
    level = TRAINS_FACTOR / s["num_classes"]
    lines.append(f"- Weight scales {_scale(s['weight_scales'][0])} to {_scale(s['weight_scales'][-1])} at batch "
                 f"{s['batch_size']}; a model counts as training when its best training accuracy reaches "
                 f"{level:.2f} ({TRAINS_FACTOR}x chance).")
    for norm, c in curves.items():
        lines.append(f"  - {names[norm]}: {_trains_sentence(c['by_scale'], level)} Best validation accuracy "
                     f"{_best_at(c['by_scale'])}; {_diverged_sentence(c['by_scale'])}")
    spreads = {}
    for norm, c in curves.items():
        values = [final(m["val_acc_history"]) for m in c["by_batch"]]
        spreads[norm] = round(max(values) - min(values), 3)
        per_size = ", ".join(f"{_acc(v)} at batch {m['batch_size']}" for v, m in zip(values, c["by_batch"]))
        lines.append(f"- Final validation accuracy of {names[norm]} at weight scale {_scale(s['weight_scale'])}: "
                     f"{per_size} ({_trend(c['by_batch'], values)}, spread {spreads[norm]:.3f}).")
    if {"spatial_batchnorm", "groupnorm"} <= spreads.keys():
        bn, gn = spreads["spatial_batchnorm"], spreads["groupnorm"]
        how = ("as much on the batch size as" if bn == gn
               else f"{'more' if gn > bn else 'less'} on the batch size than")
        lines.append(f"- Across batch sizes the final validation accuracy spreads over {bn:.3f} with spatial "
                     f"batchnorm and {gn:.3f} with groupnorm: in this run group norm's result depends {how} "
                     "batch norm's.")
    lines.append(f"- One validation sample is {1 / s['num_val']:.3f} of validation accuracy.")
    return lines
