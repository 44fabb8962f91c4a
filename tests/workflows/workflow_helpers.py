"""Settings shared by the workflow tests."""

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
