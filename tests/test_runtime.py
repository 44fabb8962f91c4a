"""`geosurge.runtime`: the settings a Ray on one machine gets, seen by the processes that use them."""

import json
import os
import subprocess
import sys

from geosurge.runtime import single_machine_environment

# A driver that starts a local Ray as the pipeline does, then asks a Ray worker what its environment holds.
DRIVER = """
import json, os, ray
from geosurge.config import load_config
from geosurge.runtime import init_ray, single_machine_environment
init_ray(load_config(overrides=["ray.num_cpus=2"]))
names = list(single_machine_environment())
print(json.dumps(ray.get(ray.remote(lambda: {n: os.environ.get(n) for n in names}).remote())))
ray.shutdown()
"""


def test_a_parquet_footer_actor_per_core_capped_at_rays_default():
    assert single_machine_environment(2)["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "2"
    assert single_machine_environment(96)["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "32"  # Ray's own, on big machines
    assert single_machine_environment()["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == str(min(os.cpu_count() or 1, 32))


def test_a_local_rays_workers_get_the_single_machine_settings_and_the_users_own_win(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in single_machine_environment() and k != "RAY_ADDRESS"}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "1.5"  # the user's choice
    out = subprocess.run([sys.executable, "-c", DRIVER], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {**single_machine_environment(), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"}
    assert seen == expected
