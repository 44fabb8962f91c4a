"""Data: manifests (our columns and the public formats), the GeoWorld synthetic data set, the Ray Data ingest
stage, image decoding and the shard reader. Storage itself is `geosurge.storage`, one floor down."""
