"""ray_cluster.yaml is a valid Ray cluster launcher file, and it installs and names the real project."""

import json
import re
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


# The oldest NVIDIA driver each CUDA major version runs on (NVIDIA's CUDA Toolkit release notes, "CUDA Toolkit and
# Corresponding Driver Versions", minor-version compatibility): CUDA 12.x needs >= 525, CUDA 13.x >= 580.
MIN_DRIVER_FOR_CUDA = {12: 525, 13: 580}


def test_every_node_boots_a_pinned_ami_whose_driver_runs_the_images_torch():
    """`latest_dlami` is Ray's hard-coded Ubuntu 18.04 DLAMI (CUDA 11.2): the image's CUDA 13 torch cannot run there."""
    import torch

    text = (REPO / "ray_cluster.yaml").read_text()
    config = yaml.safe_load(text)
    images = {name: t["node_config"]["ImageId"] for name, t in config["available_node_types"].items()}
    (ami,) = set(images.values())  # one image everywhere
    assert re.fullmatch(r"ami-[0-9a-f]{8,17}", ami), images
    # the file says which driver the image's torch needs and how to find the AMI id in a region
    needed = MIN_DRIVER_FOR_CUDA[int(torch.version.cuda.split(".")[0])]
    stated = re.search(r"needs NVIDIA driver >= (\d+)", text)
    assert stated and int(stated.group(1)) >= needed, f"torch {torch.__version__} needs driver >= {needed}"
    ship = re.search(r"driver (\d+)\.\d+(?:\.\d+)?, CUDA (\d+)\.\d+", text)  # what the pinned image ships
    assert ship and int(ship.group(1)) >= needed and int(ship.group(2)) >= int(torch.version.cuda.split(".")[0])
    assert "aws ssm get-parameter" in text and "aws ec2 describe-images" in text
    assert re.search(r"/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-2[24]\.04/latest/ami-id",
                     text)
    assert f"({config['provider']['region']})" in text  # the region the pinned id belongs to is named beside it


def test_every_worker_node_type_has_an_instance_profile_the_file_says_how_to_create():
    """Workers read and write the bucket (ingest, checkpoints, eval): without a profile they have no S3 credentials."""
    text = (REPO / "ray_cluster.yaml").read_text()
    config = yaml.safe_load(text)
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        profile = node_type["node_config"].get("IamInstanceProfile")
        assert profile and set(profile) <= {"Name", "Arn"}, f"{name} has no IamInstanceProfile"
        profile_name = profile.get("Name") or profile["Arn"].rsplit("/", 1)[1]
        assert f"create-instance-profile --instance-profile-name {profile_name}" in text
        assert re.search(rf"iam:PassRole.*role/{re.escape(profile_name)}", text)  # the head may launch with it
