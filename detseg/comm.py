"""torchrun integration: process group set-up, rank queries, reductions.

``torchrun --nproc_per_node N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we start
NCCL on GPUs and gloo on CPU. Multi-node is plain torchrun with ``--nnodes`` and a rendezvous.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .utils import rank, world_size  # noqa: F401  (part of this module's API)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


_DEVICE: dict = {}


def init(device: str) -> str:
    """Start the process group if launched by torchrun; returns the device this rank uses.

    Safe to call more than once: later calls return the first call's device.
    """
    if not launched_by_torchrun():
        return device
    if "device" in _DEVICE:
        return _DEVICE["device"]
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        _DEVICE["device"] = f"cuda:{local}"
    else:
        dist.init_process_group("gloo")
        _DEVICE["device"] = "cpu"
    return _DEVICE["device"]


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a CPU tensor goes through the GPU under NCCL, which
    reduces CUDA tensors only)."""
    if dist.is_initialized():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            on_gpu = t.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_lists(items: list) -> list:
    """Every rank's list concatenated in rank order (on every rank); ``items`` itself when alone."""
    if not dist.is_initialized():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def params_identical(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical parameters (compares a checksum vector)."""
    if not dist.is_initialized():
        return True
    flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in model.parameters()])
    local = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64)).sum()])
    gathered = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
