"""DeepSpeed's C++ ops, compiled once per machine into a cache every training process shares.

DeepSpeed JIT-compiles the ops a run loads (on CPU: its Adam and its shared-memory collectives) the first time a
process calls `deepspeed.initialize`: about a minute of a 2-core machine, inside the first training run. Ninja
keeps the result in `TORCH_EXTENSIONS_DIR` and skips the build while the compile command is unchanged (the same
Python environment at the same path) and the same ninja reads its log. The default cache has one folder per Python
environment (`environment_cache_dir`): the include paths in each command name the environment's torch, so two venvs
sharing one folder (two checkouts, a CI clone) would each find every command changed and rebuild in turn.
`build_deepspeed_ops` does it ahead of time, as `make install` does, so no run pays for it. (Not in infra/Dockerfile:
DeepSpeed compiles its CPU ops with -march=native, for the machine that builds them, and an image's GPU ops need the
GPU machine's toolkit.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

DEFAULT_EXTENSIONS_DIR = str(Path.home() / ".cache" / "geosurge" / "torch_extensions")
# the builders `deepspeed.initialize` loads for our config: the optimizer (DeepSpeed's AdamW) and, on CPU,
# the communication backend's shared-memory op
OP_BUILDERS = ("FusedAdamBuilder", "ShareMemCommBuilder")


def use_extensions_cache() -> str:
    """Point `TORCH_EXTENSIONS_DIR` at this environment's folder of the shared cache unless the environment chose one,
    and have torch's builds run this Python environment's own ninja (`use_environment_ninja`); returns the folder."""
    use_environment_ninja()
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", environment_cache_dir())


def environment_cache_dir(root: str = DEFAULT_EXTENSIONS_DIR) -> str:
    """This Python environment's folder under `root`: the environment folder's name and a hash of its full path (a
    Ray worker started by this venv's Python has the same `sys.prefix`, so it finds the same folder)."""
    prefix = os.path.realpath(sys.prefix)
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:10]
    return os.path.join(root, f"{os.path.basename(prefix).lstrip('.') or 'python'}-{digest}")


def use_environment_ninja() -> str | None:
    """Put the folder of the `ninja` package's binary (a DeepSpeed dependency, so in every environment that trains)
    first on PATH, where torch's extension builds look for `ninja`; returns that folder, or None without the package.

    Ninja logs each build command under a hash of its own version's making: a different ninja finds every command
    changed and rebuilds every op. Measured here: a system ninja 1.11 beside the venv's 1.13; a venv that is not
    activated ran the system's in `make install` and in-process fits, the venv's in Ray jobs (whose PATH has the venv
    first), so each switch rebuilt fused_adam and the shm op, 75 s of an idle 2-core machine."""
    try:
        import ninja
    except ImportError:  # torch then runs whichever ninja PATH finds, as it would without us
        return None
    folder = os.path.abspath(ninja.BIN_DIR) if ninja.BIN_DIR else ""
    if not folder or shutil.which("ninja", path=folder) is None:
        return None
    others = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.abspath(p) != folder]
    os.environ["PATH"] = os.pathsep.join([folder, *others])
    return folder


def build_deepspeed_ops() -> dict[str, str]:
    """Compile (or find in the cache) every op of OP_BUILDERS this machine's accelerator supports: {op: what
    happened}. An op that cannot be built here is reported, not raised: the run would build it, or fail, as
    DeepSpeed does without this step."""
    folder = use_extensions_cache()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    outcome = {}
    for name in OP_BUILDERS:
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
            outcome[builder.NAME if builder is not None else name] = f"not used on {get_accelerator().device_name()}"
            continue
        started = time.perf_counter()
        try:
            builder.load(verbose=False)
        except Exception as e:  # noqa: BLE001 - a missing compiler or toolkit: say so, the run decides
            outcome[builder.NAME] = f"not built: {type(e).__name__}: {str(e)[:300]}"
            continue
        outcome[builder.NAME] = f"ready in {folder} ({time.perf_counter() - started:.0f} s)"
    return outcome
