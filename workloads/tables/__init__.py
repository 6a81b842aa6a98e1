"""Per-layer latency/energy tables (see `schema` for the format). Modules:

    schema   TableMeta, Table, load_table, table_from_measurements (file format, normalisation)
    interp   interpolate (unmeasured grid points within a family; used by Table.complete)
    fit      smooth, sample_grid, calibrate (and interpolate)
    host     layer_workloads and the PyTorch host profiler (measure_on_host, host_meta, build_host_table)
    results  measurements_from_results, tables_from_results (campaign results of layer suites)

Every public name is re-exported here: `from autlearn.workloads.tables import X` works as before the split."""

from __future__ import annotations

from autlearn.profiler.stats import median_ci
from autlearn.profiler.versions import tool_versions
from autlearn.workloads.tables.fit import CALIBRATIONS, calibrate, sample_grid, smooth
from autlearn.workloads.tables.host import LayerWorkload, build_host_table, host_meta, layer_workloads, measure_on_host
from autlearn.workloads.tables.interp import interpolate
from autlearn.workloads.tables.results import ENERGY_APPORTIONED, measurements_from_results, tables_from_results
from autlearn.workloads.tables.schema import (
    HOST_DEVICE,
    META_KEY,
    SCHEMA_VERSION,
    SOURCES,
    VALUE_COLUMNS,
    Table,
    TableMeta,
    load_table,
    table_from_measurements,
)

__all__ = [
    "CALIBRATIONS",
    "ENERGY_APPORTIONED",
    "HOST_DEVICE",
    "LayerWorkload",
    "META_KEY",
    "SCHEMA_VERSION",
    "SOURCES",
    "Table",
    "TableMeta",
    "VALUE_COLUMNS",
    "build_host_table",
    "calibrate",
    "host_meta",
    "interpolate",
    "layer_workloads",
    "load_table",
    "measure_on_host",
    "measurements_from_results",
    "median_ci",
    "sample_grid",
    "smooth",
    "table_from_measurements",
    "tables_from_results",
    "tool_versions",
]
