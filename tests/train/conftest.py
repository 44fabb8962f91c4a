"""The training tests' data: one small ingested GeoWorld (train / val / test shards) and its geocells."""

from dataclasses import dataclass

import pytest

from geosurge.config import GeoWorldConfig, IngestConfig
from geosurge.data.geoworld import generate_geoworld
from geosurge.data.ingest import ingest
from geosurge.data.shards import split_batches, split_rows
from geosurge.geo.geocells import GeocellHierarchy
from geosurge.segmentation import GROUND_TRUTH_SEGMENTER


@dataclass
class Shards:
    uri: str
    hierarchy: GeocellHierarchy
    hierarchy_uri: str
    rows: dict[str, int]


@pytest.fixture(scope="session")
def small_shards(ray_local, tmp_path_factory) -> Shards:
    """200 GeoWorld images (about 160 train / 20 val / 20 test), 32 px, ground-truth 4×4 label maps."""
    root = tmp_path_factory.mktemp("train_world")
    manifest = generate_geoworld(GeoWorldConfig(num_images=200, image_size=48), str(root / "geoworld"), progress=False)
    result = ingest(manifest, str(root / "ingest"),
                    IngestConfig(image_size=32, label_grid=4, segmenter=GROUND_TRUTH_SEGMENTER))
    (coords,) = split_batches(result.shards_uri, "train", batch_size=10_000, columns=["lat", "lon"])
    hierarchy = GeocellHierarchy.build(coords.column("lat").to_numpy(), coords.column("lon").to_numpy(), (100, 40), 4)
    hierarchy_uri = str(root / "geocells.parquet")
    hierarchy.save(hierarchy_uri)
    rows = {split: split_rows(result.shards_uri, split) for split in ("train", "val", "test")}
    return Shards(result.shards_uri, hierarchy, hierarchy_uri, rows)
