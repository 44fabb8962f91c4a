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

from geosurge.data import storage

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
