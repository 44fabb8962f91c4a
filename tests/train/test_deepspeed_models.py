"""Every registered model takes a real DeepSpeed ZeRO step with the trainer's own DeepSpeed config.

The model tests run plain PyTorch; DeepSpeed has its own demands (it broadcasts every parameter as bytes at
initialisation, partitions gradients, wraps the optimizer), which only a real engine checks.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint

from geosurge.config import GeoClipConfig, ModelConfig, TrainConfig
from geosurge.models import HierarchySpec, create_model, list_models
from geosurge.train.checkpoints import checkpoint_problem, has_optimizer_files
from geosurge.train.deepspeed_ops import build_deepspeed_ops, environment_cache_dir, use_extensions_cache
from geosurge.train.trainer import consolidated_state_dict, deepspeed_config
from tests.conftest import free_port
from tests.models.model_helpers import TINY_VIT, random_batch, small_hierarchy


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group on a free port; torch.distributed's variables leave the environment with it (left set,
    a later test's tools read them: infra/seaweedfs.sh once took MASTER_PORT for its own)."""
    use_extensions_cache()
    with pytest.MonkeyPatch.context() as env:
        for name, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                                LOCAL_RANK="0").items():
            env.setenv(name, value)
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


def test_each_python_environment_has_its_own_ops_folder(tmp_path, monkeypatch):
    """Compile commands name the environment's torch: two venvs in one folder would rebuild each other's ops in turn."""
    mine = environment_cache_dir(str(tmp_path))
    assert Path(mine).parent == tmp_path and Path(mine).name.startswith("venv-")
    assert environment_cache_dir(str(tmp_path)) == mine  # stable: every process of this venv finds the same folder
    monkeypatch.setattr(sys, "prefix", "/elsewhere/.venv")
    other = environment_cache_dir(str(tmp_path))
    assert Path(other).parent == tmp_path and Path(other).name.startswith("venv-") and other != mine


def test_a_later_process_loads_the_built_ops_whichever_ninja_its_path_finds_first(tmp_path):
    """Ninja reads another version's build log as every command changed: a process whose PATH finds another ninja
    first (a system one, as a venv that is not activated does) would rebuild every op. Here that other ninja can only
    print its version; the process still gets every op from the cache, the .so files untouched."""
    build_deepspeed_ops()
    cache = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    built = {so: so.stat().st_mtime_ns for so in cache.glob("*/*.so")}
    assert len(built) == 2, built
    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text('#!/bin/sh\n[ "$1" = --version ] && echo 1.10.0 && exit 0\n'
                                 'echo "not this ninja" >&2\nexit 1\n')
    (other / "ninja").chmod(0o755)
    env = {**os.environ, "PATH": f"{other}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-c", "from geosurge.train.deepspeed_ops import build_deepspeed_ops as b; "
                          "import os; print(sorted(b().values())); print(os.environ['PATH'].split(os.pathsep)[:2])"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    outcomes, path_head = out.stdout.strip().splitlines()[-2:]
    assert outcomes.count("ready in") == 2 and "not built" not in outcomes, out.stdout[-3000:]
    assert str(other) not in path_head.split("'")[1]  # the environment's ninja folder now comes first
    assert {so: so.stat().st_mtime_ns for so in cache.glob("*/*.so")} == built  # nothing was rebuilt


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


@pytest.mark.parametrize("zero_stage, bf16", [(0, False), (0, True), (1, False), (2, False), (3, False)])
def test_a_checkpoint_of_any_zero_stage_consolidates_to_the_engines_weights(process_group, zero_stage, bf16,
                                                                            tmp_path):
    """What registration and fine-tuning read back (`consolidated_state_dict`) is the trained model, and a
    restarted worker group takes the checkpoint as whole, whatever the stage: ZeRO-0 in fp32 writes no optimizer
    files, the others keep the fp32 weights in them."""
    import deepspeed

    hierarchy = small_hierarchy()
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="geosurge", backbone_kwargs=TINY_VIT, embed_dim=16, fusion_heads=2),
                         HierarchySpec.from_hierarchy(hierarchy))
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = deepspeed_config(TrainConfig(batch_size=4, zero_stage=zero_stage, bf16=bf16))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=config)
    for _ in range(2):
        engine.backward(engine(random_batch(hierarchy, n=4))["loss"])
        engine.step()
    engine.save_checkpoint(str(tmp_path / "ckpt"))
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=zero_stage == 3):
        trained = {name: tensor.detach().clone() for name, tensor in engine.module.state_dict().items()}

    # the rule a restarted worker group checks a checkpoint by is DeepSpeed's layout for these settings
    folder = tmp_path / "ckpt"
    tag = folder / (folder / "latest").read_text().strip()
    assert bool(list(tag.glob("*_optim_states.pt"))) == has_optimizer_files(zero_stage)
    assert checkpoint_problem(Checkpoint.from_directory(str(folder)), has_optimizer_files(zero_stage)) is None

    restored = consolidated_state_dict(str(folder))
    assert set(restored) == set(initial)
    assert all(restored[name].dtype == torch.float32 for name in restored)
    moved = [name for name in restored if not torch.equal(restored[name], initial[name].float())]
    assert moved, "the checkpoint holds the initial weights, not the trained ones"
    for name, tensor in trained.items():  # bf16: the engine's copy is the fp32 weights rounded
        assert torch.allclose(restored[name].to(tensor.dtype).float(), tensor.float(), atol=1e-6), name
    if bf16 and zero_stage > 0:  # the fp32 master weights from the partitions, not the bf16 copy widened
        assert any(not torch.equal(t, t.bfloat16().float()) for t in restored.values())
