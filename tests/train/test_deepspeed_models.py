"""Every registered model takes a real DeepSpeed ZeRO step with the trainer's own DeepSpeed config.

The model tests run plain PyTorch; DeepSpeed has its own demands (it broadcasts every parameter as bytes at
initialisation, partitions gradients, wraps the optimizer), which only a real engine checks.
"""

import os

import pytest
import torch

from geosurge.config import GeoClipConfig, ModelConfig, TrainConfig
from geosurge.models import HierarchySpec, create_model, list_models
from geosurge.train.trainer import DEFAULT_EXTENSIONS_DIR, deepspeed_config
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy


@pytest.fixture(scope="module")
def process_group():
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("zero_stage, bf16", [(2, False), (3, False), (2, True)])  # bf16: the GPU recipe's setting
@pytest.mark.parametrize("name", list_models())
def test_model_trains_under_deepspeed(process_group, name, zero_stage, bf16, tmp_path):
    import deepspeed

    gallery = tmp_path / "gallery.csv"
    gallery.write_text("lat,lon\n48.8,2.3\n40.7,-74.0\n35.7,139.7\n")
    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(name=name, backbone_kwargs=TINY_VIT, embed_dim=16, fusion_heads=2,
                    geoclip=GeoClipConfig(gallery=str(gallery), pretrained_location_encoder=False)),
        HierarchySpec.from_hierarchy(hierarchy),
    )
    config = deepspeed_config(TrainConfig(batch_size=4, zero_stage=zero_stage, bf16=bf16))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config)
    batch = random_batch(hierarchy, n=4)
    for _ in range(2):
        loss = engine(batch)["loss"]
        engine.backward(loss)
        engine.step()
        assert torch.isfinite(loss)
        # gradients flowed through the engine: DeepSpeed computes the global norm when it clips
        assert engine.get_global_grad_norm() > 0
