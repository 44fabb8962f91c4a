"""ray_cluster.yaml is a valid Ray cluster launcher file, and it installs and names the real project."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_file_matches_the_schema_that_ships_with_ray():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)


def test_cluster_file_uses_this_ray_version_on_a_gpu_image_and_installs_the_project():
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-") and config["docker"]["image"].endswith("-gpu")
    assert config["file_mounts"]["/home/ray/geosurge"] == "."
    assert any("pip install -e /home/ray/geosurge" in c for c in config["setup_commands"])
    assert config["head_node_type"] in config["available_node_types"]
    assert any("gpu" in name for name in config["available_node_types"])
