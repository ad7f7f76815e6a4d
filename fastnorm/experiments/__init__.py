"""The batch-normalization notebook's four experiments and the ConvNet one, run from one command.

    fastnorm experiment all --quick --out results/

trains the models of each experiment (configs), writes one JSON record and one
figure per experiment (runner, results, plots) and a Markdown report
(report) whose statements are computed from the records.
"""

from .configs import EXPERIMENTS, ConvExperimentConfig, ExperimentConfig, ModelSpec, get_config
from .runner import run_experiment

__all__ = ["EXPERIMENTS", "ConvExperimentConfig", "ExperimentConfig", "ModelSpec", "get_config", "run_experiment"]
