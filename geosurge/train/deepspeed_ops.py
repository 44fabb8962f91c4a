"""DeepSpeed's C++ ops, compiled once per machine into a cache every training process shares.

DeepSpeed JIT-compiles the ops a run loads (on CPU: its Adam and its shared-memory collectives) the first time a
process calls `deepspeed.initialize`: about a minute of a 2-core machine, inside the first training run. Ninja
keeps the result in `TORCH_EXTENSIONS_DIR` and skips the build while the compile command is unchanged (the same
Python environment at the same path). `build_deepspeed_ops` does it ahead of time, as `make install` does, so no
run pays for it. (Not in infra/Dockerfile: DeepSpeed compiles its CPU ops with -march=native, for the machine
that builds them, and an image's GPU ops need the GPU machine's toolkit.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

DEFAULT_EXTENSIONS_DIR = str(Path.home() / ".cache" / "geosurge" / "torch_extensions")
# the builders `deepspeed.initialize` loads for our config: the optimizer (DeepSpeed's AdamW) and, on CPU,
# the communication backend's shared-memory op
OP_BUILDERS = ("FusedAdamBuilder", "ShareMemCommBuilder")


def use_extensions_cache() -> str:
    """Point `TORCH_EXTENSIONS_DIR` at the shared cache unless the environment chose one; returns the folder."""
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)


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
