"""Train the β-VAE on several GPUs with PyTorch DistributedDataParallel, launched by ``torchrun``.

Dask runs the stages after training (:mod:`mfvc_gpu.distributed`); training on several GPUs is
PyTorch's job::

    torchrun --standalone --nproc-per-node 4 -m mfvc_gpu.distributed.ddp --dataset mnist --out runs/vae-ddp

Every process loads the data set, takes its own share of the images (a seeded permutation, then
every WORLD-th image from position RANK, padded by repetition to equal shares, as
``torch.utils.data.DistributedSampler`` does) and runs the ordinary training loop
(:func:`mfvc_gpu.train.train_vae`) on a ``DistributedDataParallel`` replica: gradients are averaged
across the processes at every step, so one step sees WORLD × batch-size images. Each replica's
BatchNorm normalises with its own batch (as one GPU with that batch size would).

Rank 0 writes OUT/: ``weights.pt`` (the BetaVAE state dict), ``vae.json`` (its VAEConfig),
``history.json`` (rank 0's epochs) and ``ranks.json`` (per rank: images, device, a checksum of the
final weights — equal on every rank when the replicas stayed in step). Load the network with
:func:`load_weights` and pass it to :func:`mfvc_gpu.distributed.fit_distributed` (``model=``).

The NCCL backend is used on CUDA, gloo on the CPU (which is how the split is tested).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import MFVCError
from ..fileio import atomic_path, make_dirs, write_json
from ..flags import add_param_flags
from ..params import stage_params

log = logging.getLogger(__name__)


def shard_indices(n: int, rank: int, world_size: int, seed: int = 0) -> np.ndarray:
    """The indices of rank ``rank``'s share of ``n`` items: equal sizes, every item in some share.

    A seeded permutation of ``range(n)`` is padded by repeating its head to a multiple of
    ``world_size``; rank r takes positions r, r + world_size, ... (``DistributedSampler``'s split).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise MFVCError(f"rank={rank} must lie in [0, world_size={world_size})")
    if n < world_size:
        raise MFVCError(f"{n} images cannot be split over {world_size} processes; use fewer processes")
    order = np.random.default_rng(seed).permutation(n)
    per_rank = -(-n // world_size)
    padded = np.concatenate([order, order[: per_rank * world_size - n]])
    return padded[rank::world_size]


class _DDP(DistributedDataParallel):
    """DistributedDataParallel that exposes the wrapped network's ``cfg`` (``train_vae`` reads it)."""

    @property
    def cfg(self):
        return self.module.cfg


def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# The flags of this command: the network and training settings of the table, and the profile.
TRAINING_FLAGS = ("profile", *(p.name for p in stage_params("network") + stage_params("train")))


def given_settings(args: argparse.Namespace) -> dict:
    """The network and training settings given as flags (``profile`` included), by their names in the table."""
    from ..params import PARAMS

    return {
        p.name: getattr(args, p.name)
        for p in PARAMS
        if p.name in TRAINING_FLAGS and getattr(args, p.name, None) is not None
    }


def train_ddp(args: argparse.Namespace) -> dict | None:
    """One process of a torchrun job: train its replica, and (rank 0) write the weights."""
    from ..data.loading import load_dataset
    from ..models import BetaVAE
    from ..resolution import resolve
    from ..train import train_vae

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if not cuda:  # ranks on one machine share its cores (torchrun sets OMP_NUM_THREADS=1 otherwise)
        from .tasks import cores_per_process

        torch.set_num_threads(cores_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    backend = args.backend or ("nccl" if cuda else "gloo")
    dist.init_process_group(backend=backend)
    try:
        ds = load_dataset(args.dataset, args.split, args.data_dir)
        images = ds.images[: args.limit] if args.limit else ds.images
        share = images[shard_indices(len(images), rank, world, args.seed)]
        res = resolve(given_settings(args) | {"device": str(device), "backend": "cpu", "random_state": args.seed})
        cfg = res.train
        torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
        net = BetaVAE(res.vae)
        net.to(device, memory_format=torch.channels_last)
        model = _DDP(net, device_ids=[local_rank] if cuda else None)
        log.info("rank %d/%d: %d images on %s, %d epochs", rank, world, len(share), device, cfg.epochs)
        history = train_vae(
            model, share, cfg, device, args.seed + rank, None, False, progress=rank == 0 and not args.no_progress
        )
        ranks = [None] * world
        dist.all_gather_object(
            ranks,
            {
                "rank": rank,
                "images": int(len(share)),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "param_checksum": _checksum(net),
                "first_index": int(shard_indices(len(images), rank, world, args.seed)[0]),
            },
        )
        if rank != 0:
            return None
        out = make_dirs(args.out)
        with atomic_path(out / "weights.pt") as tmp:
            torch.save(net.state_dict(), tmp)
        write_json(out / "vae.json", asdict(net.cfg))
        write_json(out / "history.json", history)
        record = {
            "world_size": world,
            "backend": backend,
            "dataset": ds.name,
            "n_images": int(len(images)),
            "train": asdict(cfg),
            "ranks": ranks,
        }
        write_json(out / "ranks.json", record)
        return record
    finally:
        dist.destroy_process_group()


def load_weights(folder: str | os.PathLike, device: str = "cpu"):
    """The BetaVAE that ``python -m mfvc_gpu.distributed.ddp --out FOLDER`` wrote, in eval mode."""
    from ..models import BetaVAE, VAEConfig

    folder = Path(folder)
    if not (folder / "weights.pt").exists() or not (folder / "vae.json").exists():
        raise MFVCError(
            f"{folder} has no weights.pt and vae.json; train with 'torchrun ... -m mfvc_gpu.distributed.ddp "
            f"--out {folder}'"
        )
    model = BetaVAE(VAEConfig(**json.loads((folder / "vae.json").read_text())))
    model.load_state_dict(torch.load(folder / "weights.pt", map_location=device, weights_only=True))
    return model.to(device).eval()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node N -m mfvc_gpu.distributed.ddp",
        description="Train the MFVC β-VAE with DistributedDataParallel (one process per GPU). "
        "--batch-size is per process: one step sees WORLD × batch-size images.",
    )
    p.add_argument("--dataset", default="mnist", help="a registry name or a path, as for 'mfvc-gpu cluster'")
    p.add_argument("--data-dir")
    p.add_argument("--split")
    p.add_argument("--limit", type=int, help="only the first N images (smoke tests)")
    # the network and training settings, from the table (--batch-size is per process)
    add_param_flags(p, only=lambda q: q.name in TRAINING_FLAGS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["nccl", "gloo"], help="default: nccl on CUDA, gloo on the CPU")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where CUDA is available")
    p.add_argument("--out", required=True, help="folder for weights.pt, vae.json, history.json, ranks.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train_ddp(args)
    except MFVCError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
