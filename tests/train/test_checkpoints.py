"""A restarted worker group resumes from a checkpoint it can read: a truncated or corrupted latest checkpoint is
passed over (with a warning) for the newest older one that reads back whole; none readable is a clear error."""

from pathlib import Path

import pytest
import torch
from ray.train import Checkpoint

from geosurge.train.checkpoints import checkpoint_problem, usable_checkpoint


def deepspeed_like_checkpoint(root: Path, name: str, step: int) -> Checkpoint:
    """A Ray checkpoint folder laid out as DeepSpeed's save_checkpoint writes one (ZeRO-2, two ranks)."""
    folder = root / name
    tag = folder / f"global_step{step}"
    tag.mkdir(parents=True)
    (folder / "latest").write_text(f"global_step{step}")
    torch.save({"module": {"w": torch.arange(4096.0) * step}}, tag / "mp_rank_00_model_states.pt")
    for rank in (0, 1):
        torch.save({"optimizer_state_dict": {"m": torch.ones(2048) * rank}}, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    return Checkpoint.from_directory(str(folder))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path):
    oldest = deepspeed_like_checkpoint(tmp_path, "checkpoint_2026-11-30_10-00-00.000001", 10)
    previous = deepspeed_like_checkpoint(tmp_path, "checkpoint_2026-11-30_10-05-00.000001", 20)
    latest = deepspeed_like_checkpoint(tmp_path, "checkpoint_2026-11-30_10-10-00.000001", 30)
    assert checkpoint_problem(latest) is None and usable_checkpoint(latest).path == latest.path

    model = Path(latest.path, "global_step30", "mp_rank_00_model_states.pt")
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated mid-write
    assert "mp_rank_00_model_states.pt is unreadable" in checkpoint_problem(latest)
    with pytest.warns(UserWarning, match="not the latest checkpoint.*unreadable"):
        assert usable_checkpoint(latest).path == previous.path

    optim = Path(previous.path, "global_step20", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    data = bytearray(optim.read_bytes())
    data[1200:1208] = b"\xff" * 8  # bytes flipped inside a tensor: the archive opens, its CRC fails
    optim.write_bytes(bytes(data))
    assert "fails its CRC check" in checkpoint_problem(previous)
    with pytest.warns(UserWarning):
        assert usable_checkpoint(latest).path == oldest.path

    Path(oldest.path, "global_step10", "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    Path(oldest.path, "global_step10", "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    assert checkpoint_problem(oldest) == "tag 'global_step10' has no optimizer states"
    with pytest.raises(RuntimeError, match="no checkpoint of this run can be resumed"):
        usable_checkpoint(latest)


def test_a_checkpoint_without_its_latest_tag_is_not_resumable(tmp_path):
    checkpoint = deepspeed_like_checkpoint(tmp_path, "checkpoint_2026-11-30_10-00-00.000001", 10)
    Path(checkpoint.path, "latest").unlink()
    assert "no readable DeepSpeed 'latest' tag" in checkpoint_problem(checkpoint)
