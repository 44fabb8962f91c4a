"""GPS galleries: lists of real photo coordinates. The default is the 100K gallery that ships in the `geoclip`
package (MIT): GeoCLIP retrieves from it, GeoWorld samples its locations from it, benchmarks draw from it.

Kept free of torch: the package's files are found with `find_spec`, without importing the package (its
top-level import pulls in transformers and builds a CLIP model class).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geosurge import storage

GEOCLIP_GALLERY = "geoclip"


def geoclip_package_file(*parts: str) -> Path:
    """A data file inside the installed `geoclip` package."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the `geoclip` package is not installed: pip install geoclip")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed geoclip package")
    return path


def load_gps_gallery(uri: str = GEOCLIP_GALLERY, s3: storage.S3Config | None = None) -> np.ndarray:
    """GPS gallery → float64 [N, 2] (lat, lon). `uri`: "geoclip" (the package's 100K coordinates) or a
    Parquet/CSV file (local path, file:// or s3://) with lat and lon columns (any letter case)."""
    if uri == GEOCLIP_GALLERY:
        uri = str(geoclip_package_file("model", "gps_gallery", "coordinates_100K.csv"))
    fs, path = storage.resolve(uri, s3)
    if path.endswith(".parquet"):
        df = pq.read_table(path, filesystem=fs).to_pandas()
    else:
        with fs.open_input_stream(path) as f:
            df = pd.read_csv(f)
    columns = {str(c).lower(): c for c in df.columns}
    if "lat" not in columns or "lon" not in columns:
        raise ValueError(f"GPS gallery {uri} needs lat and lon columns; it has {list(df.columns)}")
    latlon = df[[columns["lat"], columns["lon"]]].to_numpy(dtype=np.float64)
    if len(latlon) == 0:
        raise ValueError(f"GPS gallery {uri} has no rows")
    bad = ~np.isfinite(latlon).all(1) | (np.abs(latlon[:, 0]) > 90) | (np.abs(latlon[:, 1]) > 180)
    if bad.any():
        raise ValueError(f"GPS gallery {uri}: {int(bad.sum())} rows are not valid (lat, lon) degrees, e.g. row {int(bad.argmax())}")
    return latlon


def sample_photo_coordinates(n: int, seed: int = 0, gallery: str = GEOCLIP_GALLERY) -> tuple[np.ndarray, np.ndarray]:
    """n coordinates that follow a real photo distribution: gallery points with Gaussian jitter, 70% by
    0.01° (the same spot: landmarks, photo clusters) and 30% by 0.5° (the same region). Deterministic."""
    points = load_gps_gallery(gallery)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, points.shape[0], size=n)
    sigma = np.where(rng.random(n) < 0.7, 0.01, 0.5)
    lat = points[pick, 0] + rng.standard_normal(n) * sigma
    lon = points[pick, 1] + rng.standard_normal(n) * sigma
    # fold latitude back over the poles; wrap longitude into [-180, 180)
    lat = np.where(lat > 90, 180 - lat, np.where(lat < -90, -180 - lat, lat))
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon
