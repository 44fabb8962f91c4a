"""The GPU decisions in one place: which device a model runs on, whether bf16 autocast is on, and how many GPUs a
Ray actor asks for. Training, the segmentation and eval actors and `GeoLocator` all ask here, so a CPU-only
machine and a GPU node take the same code path with one answer changed."""

from __future__ import annotations

import contextlib

import torch


def device_for(use_gpu: bool | None = None, cuda_available: bool | None = None) -> torch.device:
    """`use_gpu` None: the GPU when there is one, else the CPU; True: the GPU (an error without one, rather than
    a silent 100x slower run); False: the CPU. `cuda_available` defaults to what torch sees."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if use_gpu and not cuda:
        raise RuntimeError("a GPU was asked for (use_gpu) but torch sees no CUDA device")
    return torch.device("cuda" if cuda and use_gpu is not False else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (half the memory traffic); fp32 on a CPU, where bf16 matmuls are slow on many chips."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `bf16`, else a context that changes nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def actor_num_gpus(requested: float, cluster_gpus: float) -> float:
    """GPUs a Ray actor asks for: `requested` when the cluster has GPUs, else 0 (an actor asking for a GPU on a
    CPU-only cluster would wait forever)."""
    if requested < 0:
        raise ValueError(f"GPUs per actor must be >= 0, got {requested}")
    return float(requested) if cluster_gpus > 0 else 0.0
