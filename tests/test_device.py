"""The GPU decisions, checked on the CPU: which device, bf16 autocast on or off, GPUs per Ray actor."""

import pytest
import torch

from geosurge.device import actor_num_gpus, autocast, device_for, inference_dtype


def test_the_device_follows_use_gpu_and_what_torch_sees():
    assert device_for(None, cuda_available=True).type == "cuda"  # a GPU when there is one
    assert device_for(None, cuda_available=False).type == "cpu"
    assert device_for(False, cuda_available=True).type == "cpu"  # asked not to
    assert device_for(True, cuda_available=True).type == "cuda"
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        device_for(True, cuda_available=False)  # a clear error, never a silent CPU run
    assert device_for().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bf16_only_on_the_gpu_and_autocast_only_when_asked():
    assert inference_dtype(torch.device("cuda")) == torch.bfloat16
    assert inference_dtype(torch.device("cpu")) == torch.float32
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), bf16=True):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), bf16=False):
        assert (a @ b).dtype == torch.float32


def test_an_actor_asks_for_gpus_only_on_a_cluster_that_has_them():
    assert actor_num_gpus(1.0, cluster_gpus=8) == 1.0
    assert actor_num_gpus(0.5, cluster_gpus=1) == 0.5
    assert actor_num_gpus(1.0, cluster_gpus=0) == 0.0  # it would wait forever for a GPU
    assert actor_num_gpus(0.0, cluster_gpus=8) == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        actor_num_gpus(-1, cluster_gpus=8)
