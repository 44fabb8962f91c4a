"""GeoSURGE: worldwide image geo-localization as a Ray Data + Ray Train + MLflow pipeline."""

__version__ = "0.1.0"
