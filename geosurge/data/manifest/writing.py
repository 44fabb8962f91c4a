"""Writing manifests and quarantine tables, as Parquet through the one writer `geosurge.storage.write_parquet`."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from geosurge.data.manifest.schema import (
    QUARANTINE_SCHEMA,
    REQUIRED_COLUMNS,
    _conform,
    _require_columns,
    _strict_schema,
    _with_warnings,
)
from geosurge.storage import S3Config, write_parquet

# --------------------------------------------------------------------------------------------- writing


def write_manifest(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a (validated) manifest as Parquet in MANIFEST_SCHEMA, extra columns after the core ones."""
    _require_columns(table.column_names, REQUIRED_COLUMNS, "manifest")
    out = _with_warnings(_conform(table, {}), [])
    write_parquet(out.cast(_strict_schema(out.schema)), uri, s3)


def write_quarantine(table: pa.Table, uri: str, s3: S3Config | None = None) -> None:
    """Write a quarantine table as Parquet in QUARANTINE_SCHEMA (extra columns kept after the schema's)."""
    _require_columns(table.column_names, QUARANTINE_SCHEMA.names, "quarantine table")
    cols = {f.name: pc.cast(table.column(f.name), f.type) for f in QUARANTINE_SCHEMA}
    cols.update({c: table.column(c) for c in table.column_names if c not in cols})
    schema = pa.schema([*QUARANTINE_SCHEMA, *(table.schema.field(c) for c in table.column_names
                                              if c not in QUARANTINE_SCHEMA.names)])
    write_parquet(pa.table(cols).cast(schema), uri, s3)
