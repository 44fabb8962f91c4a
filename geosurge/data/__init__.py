"""Data: manifests, storage, the GeoWorld synthetic data set and the Ray Data ingest stages."""
