"""Every registered model takes a real DeepSpeed ZeRO step with the trainer's own DeepSpeed config.

The model tests run plain PyTorch; DeepSpeed has its own demands (it broadcasts every parameter as bytes at
initialisation, partitions gradients, wraps the optimizer), which only a real engine checks.
"""

import os

import pytest
import torch

from geosurge.config import GeoClipConfig, ModelConfig, TrainConfig
from geosurge.models import HierarchySpec, create_model, list_models
from geosurge.train.deepspeed_ops import build_deepspeed_ops, use_extensions_cache
from geosurge.train.trainer import deepspeed_config
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy


@pytest.fixture(scope="module")
def process_group():
    use_extensions_cache()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    yield
    torch.distributed.destroy_process_group()


def test_the_ops_a_cpu_run_loads_are_built_ahead_into_the_shared_cache():
    """`geosurge build-ops` (run by `make install`): the ops `deepspeed.initialize` loads on this CPU machine are
    compiled once, into the cache the trainer's workers and this module's engines read, so no run compiles."""
    outcome = build_deepspeed_ops()
    assert set(outcome) == {"fused_adam", "deepspeed_shm_comm"}, outcome
    assert all(what.startswith(f"ready in {os.environ['TORCH_EXTENSIONS_DIR']}") for what in outcome.values()), outcome


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
