"""The one table of settings: each declared once, everything else derived from it.

A :class:`Param` says a setting's name, type, default, valid values, one line of help and the
stage it belongs to. From :data:`PARAMS` come:

* the estimator's parameters (:class:`mfvc_gpu.MFVC`'s signature and docstring),
* the typed settings in :mod:`mfvc_gpu.settings`, a file generated from this table
  (``python -m mfvc_gpu.settings_source``; a test fails when it is stale): the
  estimator's ``__init__``, the stage dataclasses (:class:`~mfvc_gpu.settings.VAEConfig`,
  :class:`~mfvc_gpu.settings.TrainConfig`, :class:`~mfvc_gpu.settings.ManifoldConfig`,
  :class:`~mfvc_gpu.settings.ClusterConfig`) and the fields of a run's ``config.yaml``
  (:class:`mfvc_gpu.config.RunConfig`),
* the ``mfvc-gpu cluster`` flags (:func:`mfvc_gpu.flags.add_param_flags`).

A new setting is one line here, then the generator. This module imports neither torch nor any stage's code.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import MFVCError

_SAME = "<the estimator's default>"  # run_default: no separate default for runs

STAGES = ("data", "network", "train", "manifold", "cluster", "placement", "run")

# The protocols: a setting whose value is None takes its profile's. "paper" is the paper's
# (section 3): AdamW, lr 0.005, cosine annealing, batch 64, 200 epochs; UMAP on Euclidean distances,
# then K-Means. "fast" is the CPU profile: the same training for 30 epochs, then UMAP on cosine
# distances and a Gaussian mixture (how it was chosen: docs/RESULTS.md, "Searching the defaults";
# why it trains without augment: "Invariant training").
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 200, "batch_size": 64, "lr": 0.005, "augment": 0.0, "metric": "euclidean", "cluster": "kmeans"},
    "fast": {"epochs": 30, "batch_size": 64, "lr": 0.005, "augment": 0.0, "metric": "cosine", "cluster": "gmm"},
}


@dataclass(frozen=True)
class Param:
    """One setting.

    kind : int, float, str or bool. ``optional``: None is allowed too (its meaning is in ``help``).
    words : strings allowed besides values of ``kind`` (``n_clusters="auto"``).
    choices : the valid strings. low / high : the valid range (inclusive unless ``open_low``).
    stage : where it acts (one of :data:`STAGES`). field : its name in the stage dataclass
        (default: ``name``; None: not a field there).
    estimator : a parameter of :class:`mfvc_gpu.MFVC`. config : written to a run's ``config.yaml``.
    cli : has a ``mfvc-gpu cluster`` flag. aliases : older names accepted in YAML and as flags.
    run_default : the default of a run (``config.yaml`` / CLI) where it differs from the estimator's.
    """

    name: str
    kind: type
    default: Any
    stage: str
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    optional: bool = False
    field: str | None = ""
    estimator: bool = True
    config: bool = True
    cli: bool = True
    aliases: tuple[str, ...] = ()
    run_default: Any = _SAME
    words: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field_name(self) -> str | None:
        return self.name if self.field == "" else self.field

    @property
    def default_in_run(self) -> Any:
        return self.default if self.run_default is _SAME else self.run_default

    def valid(self) -> str:
        """The valid values, in words: "one of a, b", "an integer >= 1", "a number in [0, 1]"."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.kind is bool:
            text = "true or false"
        else:
            noun = "an integer" if self.kind is int else "a number"
            lo = None if self.low is None else (f"> {self.low:g}" if self.open_low else f">= {self.low:g}")
            if self.low is not None and self.high is not None:
                text = f"{noun} in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
            elif lo:
                text = f"{noun} {lo}"
            else:
                text = noun
        return text + "".join(f", {w!r}" for w in self.words) + (" or None" if self.optional else "")

    def check(self, value: Any) -> Any:
        """``value`` if valid (ints given for floats become floats), else :class:`MFVCError`
        naming the setting, the value and the valid range."""

        def bad() -> MFVCError:
            return MFVCError(f"{self.name}={value!r} is invalid: must be {self.valid()}")

        if value is None:
            if self.optional:
                return None
            raise bad()
        if isinstance(value, str) and value in self.words:
            return value
        if self.kind is bool:
            if not isinstance(value, (bool,)) and not (isinstance(value, numbers.Integral) and value in (0, 1)):
                raise bad()
            return bool(value)
        if self.kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise bad()
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad()
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                raise bad()
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad()
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            raise bad()
        if self.high is not None and value > self.high:
            raise bad()
        return value


P = Param
# fmt: off
PARAMS: tuple[Param, ...] = (
    # data (a run's, not the estimator's: the estimator is given the images)
    P("dataset", str, "digits", "data", "a name from 'mfvc-gpu datasets list', a .npz/.npy file, an image folder, "
      "or a .csv/.parquet table of feature vectors", estimator=False),
    P("split", str, None, "data", "which split; None: the set's own ('all' is the paper's protocol)",
      choices=("train", "test", "all"), optional=True, estimator=False),
    P("data_dir", str, None, "data", "folder searched first for the data set's files", optional=True, estimator=False),
    P("bad_images", str, "error", "data", "an image file in a folder that cannot be read: 'error' names it and stops, "
      "'skip' leaves it out and says how many were left out", choices=("error", "skip"), estimator=False),
    P("pixel_max", float, None, "data", "the value of a white pixel; None: 255 for 8-bit images, 65535 for 16-bit, "
      "1.0 for floats (float pixels outside [0, 1] are then refused)", low=0.0, open_low=True, optional=True,
      field=None),
    # the clustering target
    P("n_clusters", int, 10, "cluster", "number of clusters, and UMAP's output dimension unless n_components is set; "
      "'auto': chosen at the knee of a Gaussian mixture's BIC over k_min..k_max in the UMAP space; a run without "
      "it takes the data set's "
      "number of classes, or 'auto' when it has no labels", low=1, optional=True, field=None, run_default=None,
      words=("auto",)),
    P("k_min", int, 2, "cluster", "with n_clusters='auto': the smallest K tried", low=2, field=None),
    P("k_max", int, 30, "cluster", "with n_clusters='auto': the largest K tried", low=2, field=None),
    # the network
    P("encoder", str, "vae", "network", "'vae': the β-VAE's posterior means; 'none': raw pixels (or given features) "
      "go to the manifold stage (a baseline)", choices=("vae", "none"), field=None),
    P("latent_dim", int, 32, "network", "latent size; larger codes reconstruct better and cluster slightly worse "
      "once the KL term is weak", low=1),
    P("beta", float, 0.01, "network", "weight of the KL term; larger gives smoother codes and usually lower accuracy",
      low=0.0),
    P("attention", str, "simam", "network", "attention in every block: 'simam' (paper), 'cbam' or 'none' (ablations)",
      choices=("simam", "cbam", "none")),
    P("residual", bool, True, "network", "keep the residual path of every block (off is the ablation)"),
    P("fusion", bool, True, "network", "early fusion: global-average-pool every block into the latent heads "
      "(off: the last block's 256 features only)"),
    P("decoder", str, "transpose", "network", "how the decoder doubles the size: 'transpose' (4×4 transposed "
      "convolutions) or 'upsample' (nearest-neighbour upsampling, then a 3×3 convolution)",
      choices=("transpose", "upsample")),
    # training
    P("profile", str, "auto", "train", "training protocol: 'paper' (200 epochs), 'fast' (the CPU profile); "
      "'auto': paper on CUDA, fast on the CPU", choices=("auto", *PROFILES), field=None),
    P("epochs", int, None, "train", "passes over the data; None: the profile's. More sharpen the clusters up to "
      "a plateau", low=1, optional=True),
    P("batch_size", int, None, "train", "images per optimiser step; None: the profile's (paper: 64)", low=2,
      optional=True),
    P("lr", float, None, "train", "AdamW learning rate, cosine-annealed to zero; None: the profile's (paper: 0.005)",
      low=0.0, open_low=True, optional=True),
    P("weight_decay", float, 0.01, "train", "AdamW weight decay", low=0.0),
    P("amp", bool, True, "train", "bfloat16 autocast for the network where the device computes bfloat16 natively "
      "(CUDA; CPUs with AVX512-BF16 or AMX); the loss stays float32; ignored elsewhere"),
    P("compile", str, "auto", "train", "torch.compile the training step ('on' with CUDA graphs on a GPU); "
      "'auto': on where the run is long enough to repay the compilation (docs/BENCHMARKS.md)",
      choices=("auto", "on", "off")),
    P("augment", float, None, "train", "strength of the random affine views training sees (each image shifted by up "
      "to this fraction of its side, turned by up to 100× it in degrees, scaled within 1 ± it); 0: the images as "
      "they are; encoding never augments; None: the profile's (0 in both)", low=0.0, high=0.5, optional=True),
    # the manifold stage
    P("manifold", str, "umap", "manifold", "'umap' (paper), 'isomap' (ablation) or 'none' (cluster the codes)",
      choices=("umap", "isomap", "none"), field="method"),
    P("n_neighbors", int, 27, "manifold", "UMAP/Isomap neighbourhood; larger favours global structure (paper: 27)",
      low=2),
    P("min_dist", float, 0.0, "manifold", "how tightly UMAP packs points; 0 gives the dense clumps K-Means likes",
      low=0.0, high=1.0),
    P("n_components", int, None, "manifold", "output dimension; None: n_clusters (paper)", low=1, optional=True),
    P("metric", str, None, "manifold", "distance in the manifold's input space; None: the profile's (paper: "
      "euclidean, fast: cosine)", choices=("euclidean", "cosine", "manhattan", "correlation"), optional=True),
    P("out_of_sample", str, "auto", "manifold", "how new images are placed in the manifold's space: 'map' (a small "
      "network trained on the fitted coordinates: one forward pass, on the device) or 'umap' (the manifold's own "
      "transform: a neighbour search and an optimisation per call); 'auto': map in one process, umap on the Dask "
      "path (where it measured better, docs/BENCHMARKS.md)", choices=("auto", "map", "umap")),
    P("knn", str, "brute", "manifold", "cuML UMAP's kNN build: 'brute' (zero-copy) or 'nn-descent' "
      "(copies to host memory)", choices=("brute", "nn-descent")),
    # the clustering stage
    P("cluster", str, None, "cluster", "'kmeans', 'gmm' (a Gaussian mixture, full covariances) or 'dbscan'; "
      "None: the profile's (paper: kmeans, fast: gmm), kmeans with manifold='none', n_clusters='auto' and on the "
      "Dask path",
      choices=("kmeans", "dbscan", "gmm"), field="method", optional=True),
    P("n_init", int, 10, "cluster", "K-Means or GMM restarts (the best inertia or likelihood is kept)", low=1),
    P("eps", float, 0.5, "cluster", "DBSCAN neighbourhood radius", low=0.0, open_low=True),
    P("min_samples", int, 5, "cluster", "DBSCAN core-point neighbours", low=1),
    # placement
    P("device", str, "auto", "placement", "where the network runs: auto, cpu, cuda or cuda:N", field=None),
    P("backend", str, "auto", "placement", "where UMAP and clustering run: 'rapids' (cuML), 'cpu' "
      "(umap-learn, scikit-learn); 'auto': rapids on CUDA with cuML", choices=("auto", "cpu", "rapids"), field=None),
    P("gpu_memory", str, "release", "placement", "how PyTorch and cuML share the GPU on the rapids backend: "
      "'release' (PyTorch frees its cached blocks before UMAP), 'rmm' (PyTorch allocates from RMM, cuML's pool), "
      "'keep' (neither)", choices=("release", "rmm", "keep"), field=None),
    P("random_state", int, 0, "placement", "seeds the network, the data order, UMAP and the clustering "
      "(the estimator also takes None or a RandomState)", low=0, optional=True, field=None, aliases=("seed",)),
    P("fit_sample", int, None, "run", "fit the network, the manifold, the map and the clusterer on this many "
      "images drawn with the seed, then label the others as predict does (the map, in streamed chunks); None: fit on "
      "all",
      low=2, optional=True, field=None),
    # how a fit runs (estimator arguments, not settings of the result)
    P("checkpoint", str, None, "run", "write a training checkpoint there after every epoch", optional=True,
      field=None, config=False, cli=False),
    P("resume", bool, False, "run", "continue training from the checkpoint", field=None, config=False, cli=False),
    P("progress", bool, True, "run", "show a progress bar while training", field=None, config=False, cli=False),
)
# fmt: on
del P

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
ALIASES: dict[str, str] = {a: p.name for p in PARAMS for a in p.aliases}
ESTIMATOR_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.estimator)
CONFIG_PARAMS: tuple[Param, ...] = tuple(p for p in PARAMS if p.config)


def stage_params(stage: str) -> tuple[Param, ...]:
    """The settings that are fields of ``stage``'s dataclass."""
    return tuple(p for p in PARAMS if p.stage == stage and p.field_name is not None)


# Fields of VAEConfig that are not settings: the network's input shape (name, default); integers in [1, 4096].
NETWORK_INPUT: tuple[tuple[str, int], ...] = (("in_channels", 1), ("image_size", 32))
# The dataclass that holds each stage's settings (generated into mfvc_gpu/settings.py).
STAGE_CLASSES: dict[str, tuple[str, str]] = {
    "network": ("VAEConfig", "Hyperparameters of the network (the ``network`` settings, plus the input shape)."),
    "train": ("TrainConfig", "How the β-VAE is trained."),
    "manifold": ("ManifoldConfig", "The manifold stage."),
    "cluster": ("ClusterConfig", "The clustering stage."),
}
# Settings whose None means "the profile's": a stage config holds them resolved, never None.
BY_PROFILE: frozenset[str] = frozenset(k for v in PROFILES.values() for k in v)


def rows_of(table: str) -> dict[str, Param]:
    """The table rows behind a settings dataclass, by field name: a stage's, or ``"config"`` (a run's)."""
    if table == "config":
        return {p.name: p for p in CONFIG_PARAMS}
    return {p.field_name: p for p in stage_params(table)}


class Settings:
    """Base of the generated settings dataclasses: every field is checked against its row of the
    table when the object is made, and a bad one is one :class:`MFVCError` naming the field, the
    value and what is valid. A stage config holds resolved values: a profile's setting is never None."""

    table: ClassVar[str]  # a stage of STAGE_CLASSES, or "config"

    def __post_init__(self) -> None:
        rows = rows_of(self.table)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            value = getattr(self, f.name)
            p = rows.get(f.name)
            if p is None:  # the network's input shape
                if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= 4096:
                    raise MFVCError(f"{f.name}={value!r} is invalid: must be an integer in [1, 4096]")
                continue
            if value is None and p.name in BY_PROFILE and self.table != "config":
                raise MFVCError(
                    f"{type(self).__name__}.{f.name}=None: a stage config holds resolved values; give "
                    f"{p.valid().removesuffix(' or None')} (mfvc_gpu.resolution.resolve fills in the profile's)"
                )
            object.__setattr__(self, f.name, p.check(value))


def params_docstring(params: tuple[Param, ...] = ESTIMATOR_PARAMS) -> str:
    """A numpydoc ``Parameters`` section for ``params``."""
    out = ["Parameters", "----------"]
    for p in params:
        out.append(f"{p.name} : {p.valid()}, default={p.default!r}")
        out.append(f"    {p.help}.")
    return "\n".join(out)


__all__ = [
    "Param",
    "PARAMS",
    "BY_NAME",
    "ALIASES",
    "ESTIMATOR_PARAMS",
    "CONFIG_PARAMS",
    "PROFILES",
    "STAGES",
    "NETWORK_INPUT",
    "STAGE_CLASSES",
    "BY_PROFILE",
    "Settings",
    "rows_of",
    "stage_params",
    "params_docstring",
]
