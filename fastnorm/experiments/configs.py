"""Settings of the notebook's four experiments, the ConvNet one, and the smaller --quick ones.

Each experiment is a set of models that differ only in normalization, weight
scale and batch size; everything else (architecture, optimizer, epochs, number
of training samples) is shared and listed in its ExperimentConfig (the
fully-connected net's) or ConvExperimentConfig (the ConvNet's), which also
builds the models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

EXPERIMENTS = ("bn-vs-baseline", "weight-scale", "batch-size", "layernorm-batch-size", "convnet-norms")


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of an experiment."""

    label: str                 # legend label, as the notebook names the curve
    normalization: str | None  # None, 'batchnorm', 'layernorm', 'spatial_batchnorm' or 'groupnorm'
    weight_scale: float
    batch_size: int


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    normalization: str                  # the normalized models' kind
    hidden_dims: tuple[int, ...]
    weight_scales: tuple[float, ...]
    batch_sizes: tuple[int, ...]        # of the normalized models
    baseline_batch_size: int            # the un-normalized model's, one per weight scale
    learning_rate: float
    num_epochs: int
    num_train: int = 1000               # training samples taken from the dataset
    update_rule: str = "adam"
    kernel_threads: int | None = None   # None: the caller's (OpenMP's default unless set)

    def models(self) -> list[ModelSpec]:
        """The baseline, then the normalized models, for each weight scale."""
        specs = []
        for scale in self.weight_scales:
            specs.append(ModelSpec(_label("baseline", self.baseline_batch_size, self),
                                   None, scale, self.baseline_batch_size))
            specs += [ModelSpec(_label("with_norm", size, self), self.normalization, scale, size)
                      for size in self.batch_sizes]
        return specs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def build_model(self, spec: ModelSpec, subset: dict, *, kernels: str, seed: int | None = None):
        """The FullyConnectedNet of one model, its weights from NumPy's global generator."""
        from ..fc_net import FullyConnectedNet
        from .runner import input_dim, num_classes

        return FullyConnectedNet(list(self.hidden_dims), input_dim=input_dim(subset),
                                 num_classes=num_classes(subset), normalization=spec.normalization,
                                 weight_scale=spec.weight_scale, dtype=np.float32, seed=seed, kernels=kernels)


@dataclass(frozen=True)
class ConvExperimentConfig:
    """The same ConvNet without normalization, with spatial batch norm and with group norm,
    over a sweep of weight scales (at batch_size) and of batch sizes (at weight_scale)."""

    name: str
    num_filters: tuple[int, ...]
    filter_size: int
    hidden_dim: int
    G: int                              # group norm's groups
    weight_scales: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    weight_scale: float                 # of the batch-size sweep and the training curves
    batch_size: int                     # of the weight-scale sweep and the training curves
    learning_rate: float
    num_epochs: int
    num_train: int = 1000
    update_rule: str = "adam"
    normalizations: tuple = (None, "spatial_batchnorm", "groupnorm")
    # the spatial norms here see (batch, 16 or 32, 8 or 4, 8 or 4) arrays: too small to
    # share, and on a busy machine every parallel region waits for the other core
    kernel_threads: int | None = 1

    def models(self) -> list[ModelSpec]:
        """Per normalization: the weight-scale sweep, then the batch sizes not already in it."""
        specs = []
        for norm in self.normalizations:
            stem = norm or "baseline"
            pairs = [(scale, self.batch_size) for scale in self.weight_scales]
            pairs += [(self.weight_scale, size) for size in self.batch_sizes
                      if (self.weight_scale, size) not in pairs]
            specs += [ModelSpec(f"{stem} batch={size}", norm, scale, size) for scale, size in pairs]
        return specs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def build_model(self, spec: ModelSpec, subset: dict, *, kernels: str, seed: int | None = None):
        """The ConvNet of one model, its weights from NumPy's global generator (seed is
        the run's, already set there)."""
        from ..convnet import ConvNet
        from .runner import num_classes

        return ConvNet(input_dim=subset["X_train"].shape[1:], num_filters=self.num_filters,
                       filter_size=self.filter_size, hidden_dim=self.hidden_dim,
                       num_classes=num_classes(subset), normalization=spec.normalization,
                       G=self.G if spec.normalization == "groupnorm" else None,
                       weight_scale=spec.weight_scale, dtype=np.float32, kernels=kernels)


Config = ExperimentConfig | ConvExperimentConfig


def _label(stem: str, batch_size: int, config: ExperimentConfig) -> str:
    # The notebook appends the batch size to the legend only in the batch-size plots.
    return f"{stem}{batch_size}" if len(config.batch_sizes) > 1 else stem


def _notebook() -> dict[str, Config]:
    deep = dict(hidden_dims=(100,) * 5, weight_scales=(2e-2,))
    batch_sweep = dict(deep, batch_sizes=(5, 10, 50), baseline_batch_size=5,
                       learning_rate=10 ** -3.5, num_epochs=10)
    return {
        "bn-vs-baseline": ExperimentConfig(
            "bn-vs-baseline", "batchnorm", batch_sizes=(50,), baseline_batch_size=50,
            learning_rate=1e-3, num_epochs=10, **deep),
        "weight-scale": ExperimentConfig(
            "weight-scale", "batchnorm", hidden_dims=(50,) * 7,
            weight_scales=tuple(float(s) for s in np.logspace(-4, 0, num=20)),
            batch_sizes=(50,), baseline_batch_size=50, learning_rate=1e-3, num_epochs=10),
        "batch-size": ExperimentConfig("batch-size", "batchnorm", **batch_sweep),
        "layernorm-batch-size": ExperimentConfig("layernorm-batch-size", "layernorm", **batch_sweep),
        # the notebook's sweeps (weight scales 1e-4..1, batch sizes 5, 10, 50) on a two-stage ConvNet
        "convnet-norms": ConvExperimentConfig(
            "convnet-norms", num_filters=(16, 32), filter_size=3, hidden_dim=100, G=4,
            weight_scales=tuple(float(s) for s in np.logspace(-4, 0, num=9)), batch_sizes=(5, 10, 50),
            weight_scale=1e-2, batch_size=50, learning_rate=1e-3, num_epochs=10),
    }


# What --quick changes: fewer epochs and a coarser weight-scale sweep (the same
# range), so that `all` runs in well under a minute on two cores.
QUICK_CHANGES: dict[str, dict] = {
    "bn-vs-baseline": {},  # already quick: two models of 200 iterations
    "weight-scale": dict(num_epochs=5, weight_scales=tuple(float(s) for s in np.logspace(-4, 0, num=9))),
    "batch-size": dict(num_epochs=4),
    "layernorm-batch-size": dict(num_epochs=4),
    "convnet-norms": dict(num_filters=(8, 16), num_epochs=3, num_train=500,
                          weight_scales=tuple(float(s) for s in np.logspace(-4, 0, num=5))),
}

NOTEBOOK: dict[str, Config] = _notebook()


def ran_quick(record: dict) -> bool:
    """Whether an experiment record's settings are --quick ones: --quick leaves
    some experiments (bn-vs-baseline) as the notebook has them."""
    return bool(record["settings"]["quick"] and QUICK_CHANGES.get(record["experiment"]))


def get_config(name: str, quick: bool = False) -> Config:
    """The notebook's settings of experiment `name`, or the --quick ones."""
    if name not in NOTEBOOK:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    config = NOTEBOOK[name]
    return dataclasses.replace(config, **QUICK_CHANGES[name]) if quick else config
