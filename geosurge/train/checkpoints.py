"""Which of a run's Ray Train checkpoints a restarted worker group can resume from.

A checkpoint whose files were truncated or corrupted (a node lost mid-write, a bad disk, a partial copy) would
fail `engine.load_checkpoint` on every restart. Rank 0 checks the latest one first (the DeepSpeed `latest` tag,
the model and optimizer state files, each a zip archive read back whole with its CRCs) and falls back, with a
warning, to the newest older checkpoint of the run that passes; every rank then loads the one rank 0 chose.
"""

from __future__ import annotations

import posixpath
import warnings
import zipfile

import pyarrow.fs as pafs
import torch
from ray.train import Checkpoint

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's folder names: checkpoint_<timestamp>, in time order


def has_optimizer_files(zero_stage: int) -> bool:
    """Whether DeepSpeed must have written the optimizer state in files of its own (`*_optim_states.pt`): ZeRO 1-3
    partitions it into them; ZeRO-0 keeps it in the model-states file (fp32 or bf16, as measured on DeepSpeed's CPU
    path)."""
    return zero_stage > 0


def checkpoint_problem(checkpoint: Checkpoint, optimizer_files: bool = True) -> str | None:
    """Why this DeepSpeed checkpoint cannot be resumed, or None when it is complete and every file reads back.
    `optimizer_files`: the run's settings write them (`has_optimizer_files`), so one without them is incomplete."""
    fs, root = checkpoint.filesystem, checkpoint.path
    try:
        with fs.open_input_stream(posixpath.join(root, "latest")) as f:
            tag = f.read().decode().strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"no readable DeepSpeed 'latest' tag ({e})"
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(root, tag), allow_not_found=True))
    states = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".pt"))
    if not any(p.endswith("model_states.pt") for p in states):
        return f"tag {tag!r} has no model states"
    if optimizer_files and not any(p.endswith("optim_states.pt") for p in states):
        return f"tag {tag!r} has no optimizer states"
    for path in states:
        try:
            with fs.open_input_file(path) as f, zipfile.ZipFile(f) as archive:
                bad = archive.testzip()  # reads every member, checking its CRC
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            return f"{posixpath.basename(path)} is unreadable ({e})"
        if bad is not None:
            return f"{posixpath.basename(path)}: {bad} fails its CRC check"
    return None


def usable_checkpoint(latest: Checkpoint, optimizer_files: bool = True) -> Checkpoint:
    """`latest` when it can be resumed, else the newest older checkpoint of the run that can (with a warning).
    Raises RuntimeError, naming each problem, when none can."""
    problems = {}
    for candidate in [latest, *_older_checkpoints(latest)]:
        problem = checkpoint_problem(candidate, optimizer_files)
        if problem is None:
            if problems:
                warnings.warn(f"resuming from {candidate.path}, not the latest checkpoint: "
                              + "; ".join(f"{path}: {why}" for path, why in problems.items()), stacklevel=2)
            return candidate
        problems[candidate.path] = problem
    raise RuntimeError("no checkpoint of this run can be resumed: "
                       + "; ".join(f"{path}: {why}" for path, why in problems.items())
                       + " (remove the run's storage folder to start over)")


def _older_checkpoints(latest: Checkpoint) -> list[Checkpoint]:
    """The run's other checkpoint folders older than `latest` (by Ray's time-ordered names), newest first."""
    parent, name = posixpath.split(latest.path.rstrip("/"))
    infos = latest.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = sorted((posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory), reverse=True)
    return [Checkpoint(posixpath.join(parent, n), filesystem=latest.filesystem)
            for n in names if n.startswith(CHECKPOINT_PREFIX) and n < name]


def agreed_checkpoint(latest: Checkpoint | None, rank: int, optimizer_files: bool = True) -> Checkpoint | None:
    """The checkpoint every rank resumes from: rank 0 chooses (`usable_checkpoint`), the others take its choice,
    so a ZeRO group never mixes partitions of two checkpoints."""
    if latest is None:
        return None
    choice: list = [None]
    if rank == 0:
        try:
            choice = [{"path": usable_checkpoint(latest, optimizer_files).path}]
        except RuntimeError as e:  # every rank raises it, rather than the others waiting on rank 0
            choice = [{"error": str(e)}]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast_object_list(choice, src=0)
    if "error" in choice[0]:
        raise RuntimeError(choice[0]["error"])
    return Checkpoint(choice[0]["path"], filesystem=latest.filesystem)
