"""Settings shared by the workflow tests."""

import re

# A pipeline run small enough for a test: 240 GeoWorld images at 32 px, a 2-block ViT, 2 epochs.
SMALL_RUN = [
    "geoworld.num_images=240",
    "geoworld.image_size=48",
    "ingest.image_size=32",
    "ingest.label_grid=4",
    "model.backbone_kwargs={img_size: 32, patch_size: 8, depth: 2}",
    "geocells.tau_max=[150, 60, 25]",
    "geocells.tau_min=4",
    "train.epochs=2",
    "train.batch_size=16",
]

# What only Ray's, Ray Data's, Ray Train's, DeepSpeed's, transformers' and MLflow's internals print: the quiet
# console (geosurge.console) keeps all of it in the run's logs/ folder
RAY_INTERNAL_LINE = re.compile(
    r"core_worker\.cc|gcs_\w+\.cc|Failed to kill actor|\((TrainController|RayTrainWorker|MapWorker|SplitCoordinator|"
    r"DatasetManager|raylet|PlacementGroupCleaner|autoscaler)\b|Execution plan of Dataset|streaming_executor|"
    r"Progress bars disabled|real_accelerator|deepspeed_shm_comm_op|Checkpoint successfully created|"
    r"Reporting training result|Started a local Ray instance|Connecting to existing Ray cluster|"
    r"Processing zero checkpoint|Reconstructed fp32 state dict|Loading weights|Writing model shards|"
    r"Downloading artifacts|Successfully registered model|INFO mlflow|RayDeprecationWarning")


def ray_internal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if RAY_INTERNAL_LINE.search(line)]
