"""`ingest.segmenter` values that name no checkpoint (anything else is a hub id, a folder or an s3:// folder).

Kept apart from `segmenter` (PyTorch, transformers) so that what only compares specs, the command line and the
ingest driver among them, starts without importing PyTorch (about 2.6 s of a `geosurge` command's start here)."""

RANDOM_SEGMENTER = "random"  # a tiny random SegFormer
RANDOM_ONEFORMER = "random-oneformer"  # a tiny random OneFormer (tiny Swin backbone)
RANDOM_MASK2FORMER = "random-mask2former"  # a tiny random Mask2Former (tiny Swin backbone)
RANDOM_SPECS = (RANDOM_SEGMENTER, RANDOM_ONEFORMER, RANDOM_MASK2FORMER)
# Not a model but an instruction to the pipeline: train a SegFormer on the run's own GeoWorld label maps
# (geosurge.train.segmenter) and segment with that checkpoint folder.
GEOWORLD_SEGMENTER = "geoworld"
# An oracle segmenter for benchmarks and ablations: the manifest's own label maps (`label_uri`, as GeoWorld
# writes them) instead of a model's predictions. A model trained on it has no segmenter to serve with.
GROUND_TRUTH_SEGMENTER = "ground_truth"
# No segmentation: shards without label maps. For models that use none (GeoCLIP) and for measuring the rest
# of the ingest stage on its own (benchmarks/ingest.py).
NO_SEGMENTER = "none"


def is_random_spec(spec: str) -> bool:
    """True for the specs that build a random-init model (label maps without meaning)."""
    return spec in RANDOM_SPECS
