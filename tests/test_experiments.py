"""`fastnorm experiment`: figures, records and report of each experiment in a tiny configuration."""

import json

import matplotlib.image
import numpy as np
import pytest

from fastnorm.cli import main
from fastnorm.experiments import EXPERIMENTS, configs, plots, report, runner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = dict(hidden_dims=(8, 8), num_epochs=2, num_train=100)
TINY_CHANGES = {
    "bn-vs-baseline": dict(TINY),
    "weight-scale": dict(TINY, weight_scales=(1e-3, 1e-1, 1.0)),
    "batch-size": dict(TINY, batch_sizes=(5, 10, 50)),
    "layernorm-batch-size": dict(TINY, batch_sizes=(5, 10, 50)),
    "convnet-norms": dict(num_filters=(4,), hidden_dim=8, num_epochs=2, num_train=100,
                          weight_scales=(1e-3, 1e-2, 1.0), batch_sizes=(10, 50), weight_scale=1e-2),
}


@pytest.fixture(autouse=True)
def tiny_quick(monkeypatch):
    """--quick runs the tiny configurations in these tests."""
    monkeypatch.setattr(configs, "QUICK_CHANGES", TINY_CHANGES)


def run_cli(*args):
    return main(["experiment", *args, "--quick", "--no-progress"])


def load(out, name):
    return json.loads((out / f"{name}.json").read_text())


def numbers_only(record):
    """The record without what legitimately differs between runs (clock times, run ids)."""
    record = json.loads(json.dumps(record))
    record.pop("environment"), record.pop("elapsed_s")
    for run in record["runs"].values():
        run.pop("wall_time_s"), run.pop("run_id")
        for model in run["models"]:
            model.pop("time_s"), model.pop("times_s")
    return record


@pytest.fixture(scope="module")
def all_both(tmp_path_factory):
    """`experiment all --kernels both`, once for the module."""
    out = tmp_path_factory.mktemp("all")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(configs, "QUICK_CHANGES", TINY_CHANGES)
        assert run_cli("all", "--kernels", "both", "--out", str(out)) == 0
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_figure_is_a_png(all_both, name):
    path = all_both / f"{name}.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 500


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_record_has_every_history(all_both, name):
    record = load(all_both, name)
    config = configs.get_config(name, quick=True)
    assert record["experiment"] == name
    for key, value in json.loads(json.dumps(config.to_dict())).items():
        assert record["settings"][key] == value, key
    assert record["settings"]["input_dim"] == 64 and record["settings"]["num_classes"] == 10
    assert set(record["runs"]) == {"fast", "reference"}
    for run in record["runs"].values():
        assert run["wall_time_s"] > 0
        assert [m["label"] for m in run["models"]] == [s.label for s in config.models()]
        for model in run["models"]:
            iterations = config.num_epochs * (config.num_train // model["batch_size"])
            assert len(model["loss_history"]) == iterations
            assert len(model["train_acc_history"]) == config.num_epochs + 1
            assert len(model["val_acc_history"]) == config.num_epochs + 1
            assert {"best_val_acc", "best_train_acc", "final_train_loss", "diverged", "time_s",
                    "weight_scale", "batch_size", "normalization"} <= model.keys()


def test_same_model_same_numbers_on_both_kernels(all_both):
    # the baseline never normalizes: its histories cannot depend on the kernels
    runs = load(all_both, "bn-vs-baseline")["runs"]
    fast, ref = (next(m for m in runs[k]["models"] if m["normalization"] is None) for k in runs)
    assert fast["loss_history"] == ref["loss_history"]


def test_report_embeds_figures_and_states_speedup(all_both):
    text = (all_both / "report.md").read_text()
    for name in EXPERIMENTS:
        assert f"![{name}]({name}.png)" in text
    assert text.count("x end to end") == len(EXPERIMENTS)
    assert "timed in the same run" in text
    assert "nan" not in text.lower()


def test_same_seed_same_numbers(tmp_path):
    for out in ("a", "b"):
        assert run_cli("bn-vs-baseline", "--seed", "7", "--out", str(tmp_path / out)) == 0
    first, second = (numbers_only(load(tmp_path / out, "bn-vs-baseline")) for out in ("a", "b"))
    assert first == second


def test_other_seed_other_numbers(tmp_path):
    for seed in ("1", "2"):
        assert run_cli("bn-vs-baseline", "--seed", seed, "--out", str(tmp_path / seed)) == 0
    losses = [load(tmp_path / s, "bn-vs-baseline")["runs"]["fast"]["models"][0]["loss_history"]
              for s in ("1", "2")]
    assert losses[0] != losses[1]


def test_repeat_keeps_the_fastest_time(tmp_path):
    assert run_cli("bn-vs-baseline", "--kernels", "both", "--repeat", "2", "--out", str(tmp_path)) == 0
    for run in load(tmp_path, "bn-vs-baseline")["runs"].values():
        assert run["repeat"] == 2
        for model in run["models"]:
            assert len(model["times_s"]) == 2 and model["time_s"] == min(model["times_s"])
    assert "fastest of 2 repeats" in (tmp_path / "report.md").read_text()


def test_separate_runs_on_each_kernel_set_are_merged(tmp_path):
    out = str(tmp_path)
    assert run_cli("bn-vs-baseline", "--out", out) == 0
    assert run_cli("bn-vs-baseline", "--kernels", "reference", "--out", out) == 0
    assert set(load(tmp_path, "bn-vs-baseline")["runs"]) == {"fast", "reference"}
    assert "timed in two separate runs" in (tmp_path / "report.md").read_text()
    # another seed is another experiment: the old runs are not mixed in
    assert run_cli("bn-vs-baseline", "--seed", "5", "--out", out) == 0
    assert set(load(tmp_path, "bn-vs-baseline")["runs"]) == {"fast"}


@pytest.mark.parametrize("argv", [
    ["nope"],
    [],
    ["all", "--kernels", "gpu"],
    ["all", "--dataset", "mnist"],
    ["all", "--seed", "-1"],
    ["all", "--seed", "x"],
    ["all", "--repeat", "0"],
    ["all", "--epochs", "3"],
])
def test_invalid_names_and_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", *argv])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_data_dir_needs_cifar10(tmp_path, capsys):
    assert main(["experiment", "all", "--data-dir", str(tmp_path)]) == 2
    assert "--dataset cifar10" in capsys.readouterr().err


def test_missing_cifar10_says_how_to_get_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code = main(["experiment", "bn-vs-baseline", "--dataset", "cifar10", "--data-dir", str(missing),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert str(missing) in err and "fastnorm data download" in err and "--download" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cifar10_folder_found_inside_or_at_data_dir(tmp_path):
    from fastnorm.experiments.cli import _cifar10_folder

    inner = tmp_path / "cifar-10-batches-py"
    inner.mkdir()
    (inner / "data_batch_1").write_bytes(b"")
    assert _cifar10_folder(tmp_path, download=False) == inner
    assert _cifar10_folder(inner, download=False) == inner


# ------------------------------------------------------------ report and figures from made-up records

def fake_model(label, normalization, train_acc, val_acc, weight_scale=2e-2, batch_size=50, loss=None):
    loss = [2.3, 2.0, 1.5] if loss is None else loss
    return {"label": label, "normalization": normalization, "weight_scale": weight_scale,
            "batch_size": batch_size, "loss_history": loss, "train_acc_history": train_acc,
            "val_acc_history": val_acc, "best_val_acc": max(val_acc), "best_train_acc": max(train_acc),
            "final_train_loss": None if None in loss else float(np.mean(loss)),
            "diverged": "loss is inf" if None in loss else None, "time_s": 1.0}


def fake_record(name, models, normalization="batchnorm"):
    config = configs.get_config(name)
    settings = {**config.to_dict(), "normalization": normalization, "dataset": "digits", "seed": 0,
                "quick": False, "input_dim": 64, "num_classes": 10, "num_val": 250}
    return {"experiment": name, "settings": json.loads(json.dumps(settings)),
            "environment": {"numpy": "x", "fastnorm": "x", "openmp": True, "kernel_threads": 2,
                            "blas_threads": 1},
            "elapsed_s": 2.5,
            "runs": {"fast": {"kernels": "fast", "run_id": "r", "wall_time_s": 2.0, "models": models}}}


def test_report_follows_the_numbers_when_batchnorm_loses():
    record = fake_record("bn-vs-baseline", [
        fake_model("baseline", None, [0.1, 0.5, 0.9], [0.1, 0.4, 0.8]),
        fake_model("with_norm", "batchnorm", [0.1, 0.3, 0.6], [0.1, 0.3, 0.5]),
    ])
    text = report.render_report([record])
    assert "training accuracy is 0.600, lower than the baseline's 0.900 (-0.300)" in text
    assert "never reaches the baseline's final training accuracy" in text


def test_weight_scale_with_a_diverged_model(tmp_path):
    models = []
    for scale, diverged in ((1e-3, False), (1e-1, False), (1.0, True)):
        loss = [2.3, None] if diverged else [2.3, 2.0]
        models.append(fake_model("baseline", None, [0.1, 0.1 if scale < 0.01 else 0.5], [0.1, 0.3],
                                 weight_scale=scale, loss=loss))
        models.append(fake_model("with_norm", "batchnorm", [0.1, 0.7], [0.1, 0.6], weight_scale=scale))
    record = fake_record("weight-scale", models)
    text = report.render_report([record])
    assert "baseline: trains at 2 of 3 weight scales, from 1.0e-01 to 1.0e+00." in text
    assert "batchnorm: trains at 3 of 3 weight scales" in text
    assert "non-finite loss at weight scale 1.0e+00" in text
    path = plots.plot_experiment(record, tmp_path / "ws.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_layernorm_report_compares_with_batchnorm():
    def sweep(name, kind, finals):
        models = [fake_model("baseline5", None, [0.1, 0.5], [0.1, 0.5], batch_size=5)]
        models += [fake_model(f"with_norm{b}", kind, [0.1, v], [0.1, v], batch_size=b)
                   for b, v in zip((5, 10, 50), finals)]
        return fake_record(name, models, kind)

    bn = sweep("batch-size", "batchnorm", (0.5, 0.7, 0.9))
    ln = sweep("layernorm-batch-size", "layernorm", (0.8, 0.82, 0.81))
    text = report.render_report([bn, ln])
    assert "0.500 at batch 5, 0.700 at batch 10, 0.900 at batch 50 (rising with batch size" in text
    assert "spreads over 0.400 with batchnorm and 0.020 with layernorm" in text
    assert "depends less on the batch size than batchnorm's" in text


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert run_cli("bn-vs-baseline", "--out", str(target)) == 1
    assert "cannot use --out" in capsys.readouterr().err


def test_speedup_paragraph_splits_off_the_baseline_cost():
    def run(kind, base_s, norm_s):
        models = [dict(fake_model("baseline", None, [0.1, 0.5], [0.1, 0.5]), time_s=base_s),
                  dict(fake_model("with_norm", "batchnorm", [0.1, 0.9], [0.1, 0.8]), time_s=norm_s)]
        return {"kernels": kind, "run_id": "same", "repeat": 1, "wall_time_s": base_s + norm_s, "models": models}

    record = fake_record("bn-vs-baseline", [])
    record["runs"] = {"fast": run("fast", 1.0, 1.5), "reference": run("reference", 1.0, 3.0)}
    text = report.render_report([record])
    assert "the normalized model trained in 1.50 s on the compiled kernels and 3.00 s on the NumPy " \
           "reference, 2.00x end to end; all 2 models 1.60x." in text
    assert "normalization cost 2.00 s per model on the reference and 0.50 s on the compiled kernels " \
           "(the normalization itself 4.00x faster)" in text
    assert "could not make these models more than 3.00x faster end to end" in text


def test_quick_label_only_where_quick_changes_the_settings(monkeypatch):
    monkeypatch.setattr(configs, "QUICK_CHANGES", {"bn-vs-baseline": {}, "weight-scale": {"num_epochs": 1}})

    def record(name, quick):
        return {"experiment": name, "settings": {"quick": quick}}

    assert not configs.ran_quick(record("bn-vs-baseline", True))  # the notebook's settings
    assert configs.ran_quick(record("weight-scale", True))
    assert not configs.ran_quick(record("weight-scale", False))


def test_convnet_models_cover_both_sweeps_once():
    config = configs.get_config("convnet-norms")
    specs = config.models()
    keys = [(s.normalization, s.weight_scale, s.batch_size) for s in specs]
    assert len(keys) == len(set(keys)) == 3 * (len(config.weight_scales) + len(config.batch_sizes) - 1)
    for norm in config.normalizations:
        assert (norm, config.weight_scale, config.batch_size) in keys
        assert {b for n, w, b in keys if n == norm and w == config.weight_scale} == set(config.batch_sizes)
        assert {w for n, w, b in keys if n == norm and b == config.batch_size} == set(config.weight_scales)


def test_convnet_report_follows_the_numbers(tmp_path):
    config = configs.get_config("convnet-norms")
    # final accuracy per batch size (5, 10, 50) at the shared weight scale; elsewhere in the
    # weight-scale sweep the baseline stays at chance and the normalized nets keep their batch-50 value
    by_batch = {None: (0.3, 0.4, 0.5), "spatial_batchnorm": (0.6, 0.8, 0.9), "groupnorm": (0.79, 0.8, 0.8)}
    models = []
    for spec in config.models():
        accs = by_batch[spec.normalization]
        if spec.weight_scale == config.weight_scale:
            acc = accs[config.batch_sizes.index(spec.batch_size)]
        else:
            acc = accs[-1] if spec.normalization else 0.1
        models.append(fake_model(spec.label, spec.normalization, [0.1, acc], [0.1, acc],
                                 weight_scale=spec.weight_scale, batch_size=spec.batch_size))
    record = fake_record("convnet-norms", models, normalization=None)
    text = report.render_report([record])
    assert ("final validation accuracy is 0.500 without normalization, 0.900 with spatial batchnorm "
            "(+0.400), 0.800 with groupnorm (+0.300)") in text
    assert "baseline: trains at 1 of 9 weight scales, at 1.0e-02." in text
    assert "spatial batchnorm: trains at 9 of 9 weight scales, from 1.0e-04 to 1.0e+00." in text
    assert "spatial batchnorm at weight scale 1.0e-02: 0.600 at batch 5, 0.800 at batch 10, 0.900 at batch 50 " \
           "(rising with batch size, spread 0.300)" in text
    assert "spreads over 0.300 with spatial batchnorm and 0.010 with groupnorm: in this run group norm's " \
           "result depends less on the batch size than batch norm's" in text
    assert plots.plot_experiment(record, tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


def test_convnet_norms_runs_its_kernels_on_one_thread_and_restores_the_count(all_both):
    import fastnorm

    assert load(all_both, "convnet-norms")["environment"]["kernel_threads"] == 1
    with fastnorm.num_threads(2):
        assert load(all_both, "bn-vs-baseline")["settings"]["kernel_threads"] is None
        record = runner.run_experiment(configs.get_config("convnet-norms", quick=True),
                                       fastnorm.data.get_digits_data(), seed=0, progress=False)
        assert record["environment"]["kernel_threads"] == 1 and fastnorm.get_num_threads() == 2
