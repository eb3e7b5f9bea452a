"""Cached computation behind ``mfvc-gpu reproduce``: every network trained, every embedding and
every score computed once, and found again by the next run.

Layout under ``OUT/cache/<data set>/seed<k>/``::

    features/<key>.npy, .json      latent codes of one trained network (β-VAE variant or N2D MLP)
    embeddings/<key>.npy, .json    the manifold stage's output (UMAP / Isomap) on those features
    views/<key>.npy                2-D UMAP views drawn in Figures 5 and 7
    results/<key>.json, .labels.npy  the scores (and labels) of one pipeline

A key names its settings and ends in a hash of all of them (profile, epochs, network, manifold
and clustering parameters, backend), so two rows that compute the same thing share one file and
a changed default never reads a stale one. Files are written under a temporary name and renamed;
a result's JSON is written last. An interrupted run therefore leaves only whole files, and the
same command resumes from them (β-VAE training itself resumes from its per-epoch checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mfvc_gpu import MFVC, __version__, evaluate, interrupts, load_dataset
from mfvc_gpu.data.loading import Dataset
from mfvc_gpu.data.registry import REGISTRY
from mfvc_gpu.errors import MFVCError
from mfvc_gpu.fileio import FileSystemError, atomic_path, make_dirs, write_json
from mfvc_gpu.params import ESTIMATOR_PARAMS
from mfvc_gpu.resolution import resolve

from .n2d import train_mlp_autoencoder
from .report import hardware_summary
from .variants import DatasetUnavailable, Variant

# The settings each cached step depends on, from the table: a new setting enters the keys by itself.
NETWORK_KEYS = tuple(
    p.name for p in ESTIMATOR_PARAMS if p.stage in ("network", "train") and p.name not in ("profile", "epochs")
)
MANIFOLD_KEYS = tuple(p.name for p in ESTIMATOR_PARAMS if p.stage == "manifold")
CLUSTER_KEYS = tuple(p.name for p in ESTIMATOR_PARAMS if p.stage == "cluster" and p.name != "n_clusters")
N2D_SETTINGS = dict(arch="500-500-2000", optimizer="adam", lr=1e-3, batch_size=256)


def _hash(obj) -> str:
    """A short key of ``obj`` and the package version: a code change never serves stale results."""
    return hashlib.sha1(json.dumps([__version__, obj], sort_keys=True, default=str).encode()).hexdigest()[:10]


def save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def save_json(path: Path, obj: dict) -> None:
    write_json(path, obj, indent=1)


MAX_CACHE_JSON_BYTES = 16 << 20


def _damaged(path: Path, why: str) -> MFVCError:
    return MFVCError(
        f"the cache file {path} is damaged or was not written by mfvc-gpu ({why}); refused: "
        "delete it and run the same command again to recompute it"
    )


def load_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    """A cached record: a JSON mapping holding ``required`` keys; anything else is refused with one line."""
    try:
        if path.stat().st_size > MAX_CACHE_JSON_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes")
        rec = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as exc:
        raise _damaged(path, "missing") from exc
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _damaged(path, (str(exc).splitlines() or [type(exc).__name__])[0]) from exc
    if not isinstance(rec, dict):
        raise _damaged(path, f"a JSON {type(rec).__name__}, not a record")
    missing = [k for k in required if k not in rec]
    if missing:
        raise _damaged(path, f"no {', '.join(missing)}")
    return rec


def load_npy(path: Path, ndim: int | None = None) -> np.ndarray:
    """A cached array: numbers only, read without unpickling; anything else is refused with one line."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError (a pickle), EOFError: refused whole
        raise _damaged(path, (str(exc).splitlines() or [type(exc).__name__])[0]) from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or (ndim is not None and arr.ndim != ndim):
        raise _damaged(path, f"not a numeric {ndim or ''}-D array".replace(" -D", ""))
    return arr


# ---------------------------------------------------------------- the three expensive steps
# Module-level functions, so that a test can count how often each one really runs.
def train_vae_features(images: np.ndarray, params: dict, checkpoint: Path) -> tuple[np.ndarray, dict]:
    """Train the β-VAE (MFVC settings ``params``) and return its posterior means and a record."""
    est = MFVC(**dict(params, manifold="none", cluster="kmeans", checkpoint=checkpoint, resume=True))
    est.fit(images)
    last = est.history_[-1] if est.history_ else {}
    meta = dict(
        train_s=est.timings_.get("train", 0.0) + est.timings_.get("encode", 0.0),
        epochs=est.train_config_.epochs,
        profile=est.profile_,
        device=est.device_,
        final_loss=last.get("loss"),
    )
    return est.latent_, meta


def train_n2d_features(pixels: np.ndarray, n_code: int, epochs: int, seed: int, device: str) -> tuple[np.ndarray, dict]:
    """Train the N2D-style MLP autoencoder and return its codes and a record."""
    return train_mlp_autoencoder(
        pixels, n_code, epochs, seed, device, batch_size=N2D_SETTINGS["batch_size"], lr=N2D_SETTINGS["lr"]
    )


def fit_pipeline(z: np.ndarray, params: dict) -> MFVC:
    """The manifold and clustering stages of MFVC on given features."""
    return MFVC(**params).fit_features(z)


class Runner:
    """Computes (or finds in the cache) the result of one (data set, variant, seed).

    profile / epochs : the training protocol ("auto": paper on CUDA, fast on the CPU).
    limit : use a fixed random subset of that many images of every data set (smoke runs).
    compute : False reads the cache only (missing results come back as None).
    retry_failed : compute again the results cached as failed.
    """

    def __init__(
        self,
        out: Path,
        profile: str = "auto",
        epochs: int | None = None,
        device: str = "auto",
        backend: str = "auto",
        data_dir: str | None = None,
        limit: int | None = None,
        compute: bool = True,
        retry_failed: bool = False,
    ) -> None:
        placed = resolve({"device": device, "backend": backend, "profile": profile, "epochs": epochs})
        self.device, self.backend = placed.placement.device, placed.placement.backend
        self.profile, self.epochs = placed.profile, placed.train.epochs
        if limit is not None and limit < 20:
            raise MFVCError(f"--limit {limit}: use at least 20 images")
        self.cache = Path(out) / "cache"
        self.data_dir, self.limit = data_dir, limit
        self.compute, self.retry_failed = compute, retry_failed
        # settings left to the profile (None) are resolved per variant; the tables cluster UMAP's own embedding
        # (the paper's protocol), so the learned map is off here
        self.defaults = MFVC(out_of_sample="umap").get_params()
        self.hardware = hardware_summary(self.device)
        self._ds_name: str | None = None
        self._ds: Dataset | None = None

    # ------------------------------------------------------------ data
    def tag(self, dataset: str) -> str:
        name = (
            dataset.lower()
            if dataset.lower() in REGISTRY
            else f"{Path(dataset).stem}-{_hash(str(Path(dataset).resolve()))[:6]}"
        )
        return name + (f"-first{self.limit}" if self.limit else "")

    def seed_dir(self, dataset: str, seed: int) -> Path:
        return self.cache / self.tag(dataset) / f"seed{seed}"

    def dataset(self, name: str) -> Dataset:
        """The labelled images (the ``limit`` subset); one data set is held at a time."""
        if name != self._ds_name:
            self._ds = self._ds_name = None
            try:
                ds = load_dataset(name, None, self.data_dir)
            except MFVCError as exc:
                raise DatasetUnavailable(str(exc)) from exc
            if ds.labels is None:
                raise DatasetUnavailable(f"{name} has no labels to score the clusters against")
            if self.limit and self.limit < len(ds):
                idx = np.sort(np.random.RandomState(0).permutation(len(ds))[: self.limit])
                ds = Dataset(ds.name, ds.images[idx], ds.labels[idx], ds.n_classes, ds.source)
            if not ds.n_classes:
                ds.n_classes = int(len(np.unique(ds.labels)))
            self._ds, self._ds_name = ds, name
        return self._ds

    # ------------------------------------------------------------ keys
    def base_params(self, seed: int, n_clusters: int) -> dict:
        return dict(
            self.defaults,
            n_clusters=int(n_clusters),
            profile=self.profile,
            epochs=self.epochs,
            device=self.device,
            backend=self.backend,
            random_state=int(seed),
            progress=False,
            checkpoint=None,
            resume=False,
        )

    def features_key(self, v: Variant) -> str:
        if v.features == "pixels":
            return "pixels"
        if v.features == "n2d":
            spec = dict(N2D_SETTINGS, kind="n2d", profile=self.profile, epochs=self.epochs)
            return f"n2d-{self.profile}-e{self.epochs}-{_hash(spec)}"
        if v.features != "vae":
            raise MFVCError(f"variant {v.name}: unknown features {v.features!r}")
        net = {k: self.defaults[k] for k in NETWORK_KEYS} | v.network
        spec = dict(net, kind="vae", profile=self.profile, epochs=self.epochs)
        name = f"vae-{net['attention']}-{'res' if net['residual'] else 'nores'}"
        return f"{name}-{self.profile}-e{self.epochs}-{_hash(spec)}"

    def resolved(self, given: dict) -> dict:
        """``given`` settings (over the package's defaults), with the profile's values where left to it. An
        invalid variant keeps its settings as given: its run then fails with the same error, reported in its row."""
        try:
            params = resolve(
                dict(self.defaults, profile=self.profile, device=self.device, backend=self.backend) | given
            ).params
        except MFVCError:
            return dict(given)
        return {k: params[k] for k in given}

    def manifold_params(self, v: Variant | None = None, **override) -> dict:
        """The variant's manifold settings, the profile's where left to it (what keys and fits use)."""
        return self.resolved({k: self.defaults[k] for k in MANIFOLD_KEYS} | (v.manifold if v else {}) | override)

    def cluster_params(self, v: Variant) -> dict:
        c = {k: self.defaults[k] for k in CLUSTER_KEYS} | v.cluster
        return {k: val for k, val in self.resolved(c | self.manifold_params(v)).items() if k in c}

    def embedding_key(self, v: Variant) -> str | None:
        m = self.manifold_params(v)
        if m["manifold"] == "none":
            return None
        fkey = self.features_key(v)
        h = _hash([fkey, m, self.backend])
        return f"{fkey}.{m['manifold']}-nn{m['n_neighbors']}-md{m['min_dist']:g}-{self.backend}-{h}"

    def result_path(self, dataset: str, v: Variant, seed: int) -> Path:
        c = self.cluster_params(v)
        m = self.manifold_params(v)["manifold"]
        h = _hash([self.features_key(v), self.embedding_key(v), c, self.backend])
        return self.seed_dir(dataset, seed) / "results" / f"{v.features}.{m}.{c['cluster']}-{h}.json"

    # ------------------------------------------------------------ steps
    def features(self, ds: Dataset, dataset: str, v: Variant, seed: int) -> tuple[np.ndarray, dict]:
        """The variant's input features: pixels, or the cached (else freshly trained) codes."""
        if v.features == "pixels":
            return ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0, {"train_s": 0.0}
        path = self.seed_dir(dataset, seed) / "features" / f"{self.features_key(v)}.npy"
        if path.exists():
            return load_npy(path, 2), load_json(path.with_suffix(".json"))
        if v.features == "vae":
            ckpt = path.with_suffix(".ckpt.pt")
            make_dirs(path.parent)
            params = self.base_params(seed, ds.n_classes) | v.network
            z, meta = train_vae_features(ds.images, params, ckpt)
        else:
            z, meta = train_n2d_features(
                ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0, ds.n_classes, self.epochs, seed, self.device
            )
            ckpt = None
        save_json(
            path.with_suffix(".json"), dict(meta, key=self.features_key(v), n_samples=len(ds), hardware=self.hardware)
        )
        save_npy(path, np.ascontiguousarray(z, dtype=np.float32))
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
        return z, meta

    def _compute(self, ds: Dataset, dataset: str, v: Variant, seed: int) -> tuple[np.ndarray, dict]:
        params = self.base_params(seed, ds.n_classes) | v.network | self.manifold_params(v) | self.cluster_params(v)
        ekey = self.embedding_key(v)
        epath = self.seed_dir(dataset, seed) / "embeddings" / f"{ekey}.npy" if ekey else None
        if epath is not None and epath.exists():
            meta = load_json(epath.with_suffix(".json"), ("train_s", "manifold_s"))
            est = fit_pipeline(load_npy(epath, 2), dict(params, manifold="none"))
            seconds = dict(train=meta["train_s"], manifold=meta["manifold_s"])
        else:
            z, fmeta = self.features(ds, dataset, v, seed)
            est = fit_pipeline(z, params)
            seconds = dict(train=float(fmeta.get("train_s", 0.0)), manifold=est.timings_["manifold"])
            if epath is not None:
                save_json(
                    epath.with_suffix(".json"),
                    dict(
                        key=ekey,
                        train_s=seconds["train"],
                        manifold_s=seconds["manifold"],
                        backend=est.backend_,
                        hardware=self.hardware,
                    ),
                )
                save_npy(epath, est.embedding_)
        seconds["cluster"] = est.timings_["cluster"]
        return est.labels_, seconds

    def result(self, dataset: str, v: Variant, seed: int) -> dict | None:
        """The record of one run: from the cache, else computed (None when ``compute`` is off).

        Raises :class:`DatasetUnavailable` when the data set is needed and cannot be loaded.
        """
        interrupts.check()  # a safe point between cells: what finished is cached
        path = self.result_path(dataset, v, seed)
        if path.exists():
            rec = load_json(path, ("status",))
            if rec["status"] != "error" or not self.retry_failed:
                return dict(rec, label=v.label, variant=v.name, cached=True)
        if not self.compute:
            return None
        ds = self.dataset(dataset)
        rec = dict(
            dataset=dataset,
            variant=v.name,
            label=v.label,
            seed=seed,
            n_samples=len(ds),
            n_classes=ds.n_classes,
            features=self.features_key(v),
            embedding=self.embedding_key(v),
            manifold=self.manifold_params(v),
            cluster=self.cluster_params(v),
            profile=self.profile if v.features != "pixels" else None,
            epochs=self.epochs if v.features != "pixels" else None,
            device=self.device,
            backend=self.backend,
            hardware=self.hardware,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if v.max_samples and len(ds) > v.max_samples:
            rec.update(status="skipped", reason=f"{len(ds)} images: {v.too_large}")
        else:
            t0 = time.perf_counter()
            try:
                labels, seconds = self._compute(ds, dataset, v, seed)
            except FileSystemError:
                raise  # the disk, not the pipeline: stop with one line, record nothing
            except (MFVCError, ValueError, ArithmeticError, RuntimeError, MemoryError, np.linalg.LinAlgError) as exc:
                rec.update(status="error", error=f"{type(exc).__name__}: {exc}", wall_s=time.perf_counter() - t0)
            else:
                scores = evaluate(ds.labels, labels)
                rec.update(
                    status="ok",
                    seconds=seconds,
                    total_s=float(sum(seconds.values())),
                    wall_s=time.perf_counter() - t0,
                    n_clusters_found=int(len(set(labels.tolist()) - {-1})),
                    noise=int((labels < 0).sum()),
                    **scores,
                )
                save_npy(path.with_suffix(".labels.npy"), labels.astype(np.int32))
        save_json(path, rec)
        return dict(rec, cached=False)

    def labels(self, dataset: str, v: Variant, seed: int) -> np.ndarray:
        return load_npy(self.result_path(dataset, v, seed).with_suffix(".labels.npy"), 1)

    def view(self, dataset: str, v: Variant, seed: int) -> np.ndarray | None:
        """A 2-D UMAP (the paper's n_neighbors and min_dist) of the variant's input features, for
        drawing; None when it is not cached and ``compute`` is off."""
        fkey = self.features_key(v)
        m = self.manifold_params(manifold="umap", n_components=2)
        path = (
            self.seed_dir(dataset, seed)
            / "views"
            / f"{fkey}.umap2d-{self.backend}-{_hash([fkey, m, self.backend])}.npy"
        )
        if path.exists():
            return load_npy(path, 2)
        if not self.compute:
            return None
        ds = self.dataset(dataset)
        z, _ = self.features(ds, dataset, v, seed)
        est = fit_pipeline(z, self.base_params(seed, ds.n_classes) | v.network | m)
        save_npy(path, est.embedding_)
        return est.embedding_
