"""`fastnorm experiment NAME`: the notebook's experiments, their figures, records and report.

    fastnorm experiment all --quick                 every experiment, smaller settings (about a minute
                                                    on 2 cores, half of it convnet-norms)
    fastnorm experiment convnet-norms               the ConvNet with no norm, spatial batch norm and
                                                    group norm over weight scales and batch sizes
    fastnorm experiment bn-vs-baseline --kernels both --repeat 3
                                                    also on the NumPy reference: the kernels' speed-up
    fastnorm experiment weight-scale --dataset cifar10 --download

Writes NAME.png, NAME.json and report.md into --out. The report covers every
experiment record in that folder. `--kernels both` trains each model on the
compiled kernels and on the NumPy reference in turn, with the same seed, and the
report states the end-to-end speed-up; a `--kernels reference` run into a folder
that holds the same experiment's compiled run (or the other way round) does too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .configs import EXPERIMENTS

DEFAULT_OUT = "experiments-out"
DEFAULT_SEED = 231  # the notebook's np.random.seed(231)
KERNEL_SETS = {"fast": ("fast",), "reference": ("reference",), "both": ("fast", "reference")}


class DataError(Exception):
    """The dataset cannot be loaded; the message says how to get it."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "experiment", help="run the notebook's experiments, save figures and a report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", choices=(*EXPERIMENTS, "all"),
                        help=f"one of {', '.join(EXPERIMENTS)}, or all")
    parser.add_argument("--dataset", choices=("digits", "cifar10"), default="digits",
                        help="digits: scikit-learn's 8x8 digits, offline (default); cifar10: CIFAR-10")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="CIFAR-10 folder: cifar-10-batches-py or the folder holding it "
                             "(default: fastnorm's cache, $FASTNORM_DATA_DIR or ~/.cache/fastnorm)")
    parser.add_argument("--download", action="store_true",
                        help="download CIFAR-10 into --data-dir when it is not there")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help="output folder for figures, records and report (default: %(default)s)")
    parser.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED,
                        help="seed of every model's weights and minibatches (default: %(default)s)")
    parser.add_argument("--kernels", choices=tuple(KERNEL_SETS), default="fast",
                        help="normalization on the compiled kernels (fast, default), on the NumPy "
                             "reference, or both in turn to measure the speed-up")
    parser.add_argument("--repeat", type=_positive_int, default=1,
                        help="train each model N times per kernel set and keep the fastest time, "
                             "for steadier speed-ups on a busy machine (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer epochs (weight-scale 5, the batch-size experiments 4) and 9 weight "
                             "scales instead of 20; convnet-norms: 3 epochs on 500 samples, filters (8, 16), "
                             "5 weight scales instead of 9; bn-vs-baseline is already quick and runs as it is")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                        default=None, help="no progress bars (default: shown when stderr is a terminal)")
    parser.set_defaults(func=run)
    return parser


def _int_argument(text: str, low: int, high: int | None, message: str) -> int:
    """An integer in [low, high) from the command line; `message` says the range, with {value}."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(message.format(value=value))
    return value


def _positive_int(text: str) -> int:
    return _int_argument(text, 1, None, "expected a positive integer, got {value}")


def _non_negative_int(text: str) -> int:  # the range np.random.seed accepts
    return _int_argument(text, 0, 2**32, "the seed must be in [0, 2**32), got {value}")


def run(args) -> int:
    from . import configs, plots, report, results, runner

    if args.dataset == "digits" and (args.data_dir or args.download):
        print("fastnorm experiment: --data-dir and --download apply to --dataset cifar10 only",
              file=sys.stderr)
        return 2
    try:
        data = load_dataset(args.dataset, args.data_dir, args.download)
    except DataError as error:
        print(f"fastnorm experiment: {error}", file=sys.stderr)
        return 1
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"fastnorm experiment: cannot use --out {args.out}: {error}", file=sys.stderr)
        return 1
    names = EXPERIMENTS if args.name == "all" else (args.name,)
    for name in names:
        start = time.perf_counter()
        record = runner.run_experiment(configs.get_config(name, args.quick), data, seed=args.seed,
                                       kernels=KERNEL_SETS[args.kernels], repeat=args.repeat,
                                       dataset=args.dataset, quick=args.quick, progress=args.progress)
        times = _times(record)  # this run's, before an earlier run of the other kernels is merged in
        record = results.save_record(record, args.out)
        figure = plots.plot_experiment(record, args.out / f"{name}.png")
        print(f"{name}: {times}, {time.perf_counter() - start:.1f} s in all -> {figure}")
    path = report.write_report(results.load_records(args.out), args.out)
    print(f"report: {path}")
    return 0


def _times(record: dict) -> str:
    runs = record["runs"]
    return ", ".join(f"{kind} kernels {run['wall_time_s']:.1f} s" for kind, run in runs.items())


def load_dataset(dataset: str, data_dir: Path | None, download: bool) -> dict:
    """The notebook's data dict of `dataset`; DataError (saying how to get it) when it is missing."""
    from .. import data

    if dataset == "digits":
        return data.get_digits_data()
    root = _cifar10_folder(Path(data_dir or data.default_data_dir()), download)
    try:
        return data.get_CIFAR10_data(root=root, dtype=np.float32)  # the models are float32
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from None


def _cifar10_folder(data_dir: Path, download: bool) -> Path:
    """The cifar-10-batches-py folder: data_dir itself, or inside it (downloaded there if asked)."""
    from .. import data
    from ..data.cifar10 import FOLDER, TRAIN_BATCHES

    for folder in (data_dir, data_dir / FOLDER):
        if (folder / TRAIN_BATCHES[0]).is_file():
            return folder
    if not download:
        raise DataError(
            f"CIFAR-10 is not in {data_dir}. Download it with `fastnorm data download --dest {data_dir}` "
            f"or add --download to this command (about 163 MB from {data.CIFAR10_URL}); "
            "or run on the offline digits with --dataset digits.")
    try:
        return Path(data.download_cifar10(dest=str(data_dir)))
    except (data.DownloadError, OSError) as error:
        raise DataError(f"downloading CIFAR-10 into {data_dir} failed: {error}") from None
