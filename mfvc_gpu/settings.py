"""The typed settings, generated from the table in :mod:`mfvc_gpu.params`; do not edit by hand.

Regenerate with ``python -m mfvc_gpu.settings_source``; a test fails when this file and
the table disagree. Every object checks its fields against the table when it is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .params import Settings


@dataclass(frozen=True, kw_only=True)
class VAEConfig(Settings):
    """Hyperparameters of the network (the ``network`` settings, plus the input shape).

    latent_dim : latent size; larger codes reconstruct better and cluster slightly worse once the KL term is weak
    beta : weight of the KL term; larger gives smoother codes and usually lower accuracy
    attention : attention in every block: 'simam' (paper), 'cbam' or 'none' (ablations)
    residual : keep the residual path of every block (off is the ablation)
    fusion : early fusion: global-average-pool every block into the latent heads (off: the last block's 256 features
        only)
    decoder : how the decoder doubles the size: 'transpose' (4×4 transposed convolutions) or 'upsample' (nearest-
        neighbour upsampling, then a 3×3 convolution)
    in_channels : the network's input shape
    image_size : the network's input shape
    """

    table: ClassVar[str] = "network"
    latent_dim: int = 32
    beta: float = 0.01
    attention: str = "simam"
    residual: bool = True
    fusion: bool = True
    decoder: str = "transpose"
    in_channels: int = 1
    image_size: int = 32


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Settings):
    """How the β-VAE is trained.

    epochs : passes over the data; None: the profile's. More sharpen the clusters up to a plateau
    batch_size : images per optimiser step; None: the profile's (paper: 64)
    lr : AdamW learning rate, cosine-annealed to zero; None: the profile's (paper: 0.005)
    weight_decay : AdamW weight decay
    amp : bfloat16 autocast for the network where the device computes bfloat16 natively (CUDA; CPUs with AVX512-BF16
        or AMX); the loss stays float32; ignored elsewhere
    compile : torch.compile the training step ('on' with CUDA graphs on a GPU); 'auto': on where the run is long
        enough to repay the compilation (docs/BENCHMARKS.md)
    augment : strength of the random affine views training sees (each image shifted by up to this fraction of its
        side, turned by up to 100× it in degrees, scaled within 1 ± it); 0: the images as they are; encoding never
        augments; None: the profile's (0 in both)
    """

    table: ClassVar[str] = "train"
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    amp: bool = True
    compile: str = "auto"
    augment: float


@dataclass(frozen=True, kw_only=True)
class ManifoldConfig(Settings):
    """The manifold stage.

    method : 'umap' (paper), 'isomap' (ablation) or 'none' (cluster the codes)
    n_neighbors : UMAP/Isomap neighbourhood; larger favours global structure (paper: 27)
    min_dist : how tightly UMAP packs points; 0 gives the dense clumps K-Means likes
    n_components : output dimension; None: n_clusters (paper)
    metric : distance in the manifold's input space; None: the profile's (paper: euclidean, fast: cosine)
    out_of_sample : how new images are placed in the manifold's space: 'map' (a small network trained on the fitted
        coordinates: one forward pass, on the device) or 'umap' (the manifold's own transform: a neighbour search
        and an optimisation per call); 'auto': map in one process, umap on the Dask path (where it measured better,
        docs/BENCHMARKS.md)
    knn : cuML UMAP's kNN build: 'brute' (zero-copy) or 'nn-descent' (copies to host memory)
    """

    table: ClassVar[str] = "manifold"
    method: str = "umap"
    n_neighbors: int = 27
    min_dist: float = 0.0
    n_components: int | None = None
    metric: str
    out_of_sample: str = "auto"
    knn: str = "brute"


@dataclass(frozen=True, kw_only=True)
class ClusterConfig(Settings):
    """The clustering stage.

    method : 'kmeans', 'gmm' (a Gaussian mixture, full covariances) or 'dbscan'; None: the profile's (paper: kmeans,
        fast: gmm), kmeans with manifold='none', n_clusters='auto' and on the Dask path
    n_init : K-Means or GMM restarts (the best inertia or likelihood is kept)
    eps : DBSCAN neighbourhood radius
    min_samples : DBSCAN core-point neighbours
    """

    table: ClassVar[str] = "cluster"
    method: str
    n_init: int = 10
    eps: float = 0.5
    min_samples: int = 5


@dataclass(frozen=True, kw_only=True)
class RunFields(Settings):
    """The settings a run records (``config.yaml``): one field per setting with ``config=True``.

    dataset : a name from 'mfvc-gpu datasets list', a .npz/.npy file, an image folder, or a .csv/.parquet table of
        feature vectors
    split : which split; None: the set's own ('all' is the paper's protocol)
    data_dir : folder searched first for the data set's files
    bad_images : an image file in a folder that cannot be read: 'error' names it and stops, 'skip' leaves it out and
        says how many were left out
    pixel_max : the value of a white pixel; None: 255 for 8-bit images, 65535 for 16-bit, 1.0 for floats (float
        pixels outside [0, 1] are then refused)
    n_clusters : number of clusters, and UMAP's output dimension unless n_components is set; 'auto': chosen at the
        knee of a Gaussian mixture's BIC over k_min..k_max in the UMAP space; a run without it takes the data set's
        number of classes, or 'auto' when it has no labels
    k_min : with n_clusters='auto': the smallest K tried
    k_max : with n_clusters='auto': the largest K tried
    encoder : 'vae': the β-VAE's posterior means; 'none': raw pixels (or given features) go to the manifold stage (a
        baseline)
    latent_dim : latent size; larger codes reconstruct better and cluster slightly worse once the KL term is weak
    beta : weight of the KL term; larger gives smoother codes and usually lower accuracy
    attention : attention in every block: 'simam' (paper), 'cbam' or 'none' (ablations)
    residual : keep the residual path of every block (off is the ablation)
    fusion : early fusion: global-average-pool every block into the latent heads (off: the last block's 256 features
        only)
    decoder : how the decoder doubles the size: 'transpose' (4×4 transposed convolutions) or 'upsample' (nearest-
        neighbour upsampling, then a 3×3 convolution)
    profile : training protocol: 'paper' (200 epochs), 'fast' (the CPU profile); 'auto': paper on CUDA, fast on the
        CPU
    epochs : passes over the data; None: the profile's. More sharpen the clusters up to a plateau
    batch_size : images per optimiser step; None: the profile's (paper: 64)
    lr : AdamW learning rate, cosine-annealed to zero; None: the profile's (paper: 0.005)
    weight_decay : AdamW weight decay
    amp : bfloat16 autocast for the network where the device computes bfloat16 natively (CUDA; CPUs with AVX512-BF16
        or AMX); the loss stays float32; ignored elsewhere
    compile : torch.compile the training step ('on' with CUDA graphs on a GPU); 'auto': on where the run is long
        enough to repay the compilation (docs/BENCHMARKS.md)
    augment : strength of the random affine views training sees (each image shifted by up to this fraction of its
        side, turned by up to 100× it in degrees, scaled within 1 ± it); 0: the images as they are; encoding never
        augments; None: the profile's (0 in both)
    manifold : 'umap' (paper), 'isomap' (ablation) or 'none' (cluster the codes)
    n_neighbors : UMAP/Isomap neighbourhood; larger favours global structure (paper: 27)
    min_dist : how tightly UMAP packs points; 0 gives the dense clumps K-Means likes
    n_components : output dimension; None: n_clusters (paper)
    metric : distance in the manifold's input space; None: the profile's (paper: euclidean, fast: cosine)
    out_of_sample : how new images are placed in the manifold's space: 'map' (a small network trained on the fitted
        coordinates: one forward pass, on the device) or 'umap' (the manifold's own transform: a neighbour search
        and an optimisation per call); 'auto': map in one process, umap on the Dask path (where it measured better,
        docs/BENCHMARKS.md)
    knn : cuML UMAP's kNN build: 'brute' (zero-copy) or 'nn-descent' (copies to host memory)
    cluster : 'kmeans', 'gmm' (a Gaussian mixture, full covariances) or 'dbscan'; None: the profile's (paper:
        kmeans, fast: gmm), kmeans with manifold='none', n_clusters='auto' and on the Dask path
    n_init : K-Means or GMM restarts (the best inertia or likelihood is kept)
    eps : DBSCAN neighbourhood radius
    min_samples : DBSCAN core-point neighbours
    device : where the network runs: auto, cpu, cuda or cuda:N
    backend : where UMAP and clustering run: 'rapids' (cuML), 'cpu' (umap-learn, scikit-learn); 'auto': rapids on
        CUDA with cuML
    gpu_memory : how PyTorch and cuML share the GPU on the rapids backend: 'release' (PyTorch frees its cached
        blocks before UMAP), 'rmm' (PyTorch allocates from RMM, cuML's pool), 'keep' (neither)
    random_state : seeds the network, the data order, UMAP and the clustering (the estimator also takes None or a
        RandomState)
    fit_sample : fit the network, the manifold, the map and the clusterer on this many images drawn with the seed,
        then label the others as predict does (the map, in streamed chunks); None: fit on all
    """

    table: ClassVar[str] = "config"
    dataset: str = "digits"
    split: str | None = None
    data_dir: str | None = None
    bad_images: str = "error"
    pixel_max: float | None = None
    n_clusters: int | str | None = None
    k_min: int = 2
    k_max: int = 30
    encoder: str = "vae"
    latent_dim: int = 32
    beta: float = 0.01
    attention: str = "simam"
    residual: bool = True
    fusion: bool = True
    decoder: str = "transpose"
    profile: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    amp: bool = True
    compile: str = "auto"
    augment: float | None = None
    manifold: str = "umap"
    n_neighbors: int = 27
    min_dist: float = 0.0
    n_components: int | None = None
    metric: str | None = None
    out_of_sample: str = "auto"
    knn: str = "brute"
    cluster: str | None = None
    n_init: int = 10
    eps: float = 0.5
    min_samples: int = 5
    device: str = "auto"
    backend: str = "auto"
    gpu_memory: str = "release"
    random_state: int | None = 0
    fit_sample: int | None = None


class EstimatorParams:
    """The parameters of :class:`mfvc_gpu.MFVC`; ``__init__`` only stores them (scikit-learn's rule).

    pixel_max : the value of a white pixel; None: 255 for 8-bit images, 65535 for 16-bit, 1.0 for floats (float
        pixels outside [0, 1] are then refused)
    n_clusters : number of clusters, and UMAP's output dimension unless n_components is set; 'auto': chosen at the
        knee of a Gaussian mixture's BIC over k_min..k_max in the UMAP space; a run without it takes the data set's
        number of classes, or 'auto' when it has no labels
    k_min : with n_clusters='auto': the smallest K tried
    k_max : with n_clusters='auto': the largest K tried
    encoder : 'vae': the β-VAE's posterior means; 'none': raw pixels (or given features) go to the manifold stage (a
        baseline)
    latent_dim : latent size; larger codes reconstruct better and cluster slightly worse once the KL term is weak
    beta : weight of the KL term; larger gives smoother codes and usually lower accuracy
    attention : attention in every block: 'simam' (paper), 'cbam' or 'none' (ablations)
    residual : keep the residual path of every block (off is the ablation)
    fusion : early fusion: global-average-pool every block into the latent heads (off: the last block's 256 features
        only)
    decoder : how the decoder doubles the size: 'transpose' (4×4 transposed convolutions) or 'upsample' (nearest-
        neighbour upsampling, then a 3×3 convolution)
    profile : training protocol: 'paper' (200 epochs), 'fast' (the CPU profile); 'auto': paper on CUDA, fast on the
        CPU
    epochs : passes over the data; None: the profile's. More sharpen the clusters up to a plateau
    batch_size : images per optimiser step; None: the profile's (paper: 64)
    lr : AdamW learning rate, cosine-annealed to zero; None: the profile's (paper: 0.005)
    weight_decay : AdamW weight decay
    amp : bfloat16 autocast for the network where the device computes bfloat16 natively (CUDA; CPUs with AVX512-BF16
        or AMX); the loss stays float32; ignored elsewhere
    compile : torch.compile the training step ('on' with CUDA graphs on a GPU); 'auto': on where the run is long
        enough to repay the compilation (docs/BENCHMARKS.md)
    augment : strength of the random affine views training sees (each image shifted by up to this fraction of its
        side, turned by up to 100× it in degrees, scaled within 1 ± it); 0: the images as they are; encoding never
        augments; None: the profile's (0 in both)
    manifold : 'umap' (paper), 'isomap' (ablation) or 'none' (cluster the codes)
    n_neighbors : UMAP/Isomap neighbourhood; larger favours global structure (paper: 27)
    min_dist : how tightly UMAP packs points; 0 gives the dense clumps K-Means likes
    n_components : output dimension; None: n_clusters (paper)
    metric : distance in the manifold's input space; None: the profile's (paper: euclidean, fast: cosine)
    out_of_sample : how new images are placed in the manifold's space: 'map' (a small network trained on the fitted
        coordinates: one forward pass, on the device) or 'umap' (the manifold's own transform: a neighbour search
        and an optimisation per call); 'auto': map in one process, umap on the Dask path (where it measured better,
        docs/BENCHMARKS.md)
    knn : cuML UMAP's kNN build: 'brute' (zero-copy) or 'nn-descent' (copies to host memory)
    cluster : 'kmeans', 'gmm' (a Gaussian mixture, full covariances) or 'dbscan'; None: the profile's (paper:
        kmeans, fast: gmm), kmeans with manifold='none', n_clusters='auto' and on the Dask path
    n_init : K-Means or GMM restarts (the best inertia or likelihood is kept)
    eps : DBSCAN neighbourhood radius
    min_samples : DBSCAN core-point neighbours
    device : where the network runs: auto, cpu, cuda or cuda:N
    backend : where UMAP and clustering run: 'rapids' (cuML), 'cpu' (umap-learn, scikit-learn); 'auto': rapids on
        CUDA with cuML
    gpu_memory : how PyTorch and cuML share the GPU on the rapids backend: 'release' (PyTorch frees its cached
        blocks before UMAP), 'rmm' (PyTorch allocates from RMM, cuML's pool), 'keep' (neither)
    random_state : seeds the network, the data order, UMAP and the clustering (the estimator also takes None or a
        RandomState)
    fit_sample : fit the network, the manifold, the map and the clusterer on this many images drawn with the seed,
        then label the others as predict does (the map, in streamed chunks); None: fit on all
    checkpoint : write a training checkpoint there after every epoch
    resume : continue training from the checkpoint
    progress : show a progress bar while training
    """

    def __init__(
        self,
        *,
        pixel_max: float | None = None,
        n_clusters: int | str | None = 10,
        k_min: int = 2,
        k_max: int = 30,
        encoder: str = "vae",
        latent_dim: int = 32,
        beta: float = 0.01,
        attention: str = "simam",
        residual: bool = True,
        fusion: bool = True,
        decoder: str = "transpose",
        profile: str = "auto",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float = 0.01,
        amp: bool = True,
        compile: str = "auto",
        augment: float | None = None,
        manifold: str = "umap",
        n_neighbors: int = 27,
        min_dist: float = 0.0,
        n_components: int | None = None,
        metric: str | None = None,
        out_of_sample: str = "auto",
        knn: str = "brute",
        cluster: str | None = None,
        n_init: int = 10,
        eps: float = 0.5,
        min_samples: int = 5,
        device: str = "auto",
        backend: str = "auto",
        gpu_memory: str = "release",
        random_state: int | None = 0,
        fit_sample: int | None = None,
        checkpoint: str | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.pixel_max = pixel_max
        self.n_clusters = n_clusters
        self.k_min = k_min
        self.k_max = k_max
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.beta = beta
        self.attention = attention
        self.residual = residual
        self.fusion = fusion
        self.decoder = decoder
        self.profile = profile
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.amp = amp
        self.compile = compile
        self.augment = augment
        self.manifold = manifold
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.n_components = n_components
        self.metric = metric
        self.out_of_sample = out_of_sample
        self.knn = knn
        self.cluster = cluster
        self.n_init = n_init
        self.eps = eps
        self.min_samples = min_samples
        self.device = device
        self.backend = backend
        self.gpu_memory = gpu_memory
        self.random_state = random_state
        self.fit_sample = fit_sample
        self.checkpoint = checkpoint
        self.resume = resume
        self.progress = progress


__all__ = ["VAEConfig", "TrainConfig", "ManifoldConfig", "ClusterConfig", "RunFields", "EstimatorParams"]
