"""Files of points: CSV/TSV, Parquet, GeoParquet or vector files in; GeoParquet 1.1 or CSV out.

The file side of ``tessera-vz points``; the table itself is
:meth:`~tessera_vz.reader.store.TesseraStore.sample`'s. Inputs are read
whole (a table of observations is small next to its embeddings), then
sampled and written batch by batch: :class:`TableWriter` writes each batch
as it comes into a hidden file beside the output, and renames it into place
only when the last batch and the provenance are in, so an interrupted run
never leaves a file that looks complete.

Text tables (``.csv``, ``.tsv``, ``.txt``) have their delimiter sniffed
from the header line, so GBIF's downloads (tab-separated, whatever their
suffix; ``occurrence.txt`` of a Darwin Core archive) are read as columns.
GeoPackage, GeoJSON and shapefiles go through :mod:`tessera_vz.vectorfiles`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import atomic_path
from tessera_vz.export import check_writable_folder
from tessera_vz.reader.point_columns import GEOMETRY, PointsInput, points_input, year_column_of
from tessera_vz.vectorfiles import VECTOR_SUFFIXES, read_vector

log = logging.getLogger(__name__)

#: Input suffixes -> format.
INPUTS = {"csv": "csv", "tsv": "csv", "txt": "csv", "parquet": "parquet",
          "geoparquet": "parquet", "pq": "parquet",
          **dict.fromkeys(VECTOR_SUFFIXES, "vector")}  # fmt: skip
#: Delimiters a text table may use, sniffed from its header line.
DELIMITERS = ("\t", ",", ";", "|")
#: Output suffixes -> format.
OUTPUTS = {"parquet": "parquet", "geoparquet": "parquet", "pq": "parquet", "csv": "csv"}


def _suffix(path: str | Path) -> str:
    return Path(path).suffix.lower().lstrip(".")


def check_points_output(path: str | Path) -> str:
    """The output format of ``path`` (``parquet`` or ``csv``), its folder checked writable."""
    fmt = OUTPUTS.get(_suffix(path))
    if fmt is None:
        found = f"'.{_suffix(path)}'" if _suffix(path) else "no suffix"
        raise ConfigurationError(
            f"--out must end in .parquet (GeoParquet) or .csv; got {found} in {str(path)!r}"
        )
    target = Path(path)
    check_writable_folder(target)
    if target.is_dir():
        raise ConfigurationError(f"cannot write {str(path)!r}: a folder of that name exists")
    return fmt


def read_points_file(
    path: str | Path,
    *,
    lon: str | None = None,
    lat: str | None = None,
    geometry: str | None = None,
    year: str | None = None,
    own_years: bool = False,
    areas: bool = False,
) -> PointsInput:
    """The points of a CSV/TSV, Parquet, GeoParquet, GeoPackage, GeoJSON or shapefile.

    Coordinates come from the ``lon``/``lat`` columns when named, else from
    the ``geometry`` column when named, else from a GeoParquet or vector
    file's (point) geometry in its CRS, else from recognised lon/lat columns
    (``lon``/``longitude``/``decimalLongitude``, ...), else from a WKT text
    column (``geometry``/``wkt``). ``own_years``: each row is read in its
    own year, from column ``year`` or, when not named, a column named
    ``year`` in any case (GBIF's). ``areas``: polygon features are kept as
    areas (training areas of ``classify``) instead of refused.

    Raises
    ------
    ConfigurationError
        The file is missing, unreadable, of an unknown kind, or has no usable
        coordinates or year column (the message lists its columns).
    """
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigurationError(f"points file {str(path)!r} {what}")
    fmt = INPUTS.get(_suffix(p))
    if fmt is None:
        found = f"'.{_suffix(p)}'" if _suffix(p) else "no suffix"
        raise ConfigurationError(
            f"points file {str(path)!r} must be .csv/.tsv/.txt, .parquet, .geoparquet, "
            f".gpkg, .geojson or .shp; got {found}"
        )
    what = f"points file {str(path)!r}"
    crs: Any = None
    if fmt == "vector":
        table, crs = read_vector(p, what)
        geo: dict[str, Any] | None = {"primary_column": GEOMETRY, "columns": {GEOMETRY: {}}}
    else:
        table = _read_table(p, fmt, what)
        geo = _geo(table.schema.metadata)
        table = table.replace_schema_metadata(None)
    if own_years and year is None:
        year = year_column_of(table)
        if year is None:
            raise ConfigurationError(
                f"no --year given and {what} has no year column; columns: {table.column_names}. "
                "Pass --year YEAR[,YEAR] or --year-column COLUMN"
            )
    if geometry is None and geo is not None and lon is None and lat is None:
        geometry = geo.get("primary_column", GEOMETRY)
        column = geo.get("columns", {}).get(geometry, {})
        if "crs" in column and column["crs"] is None:
            log.warning("%s: geometry CRS unknown (crs null); taking lon/lat", what)
        crs = crs if fmt == "vector" else column.get("crs")
    inp = points_input(table, lon=lon, lat=lat, geometry=geometry, crs=crs, year=year, what=what,
                       areas=areas)  # fmt: skip
    log.info("%s: %d points from %s", what, inp.size, inp.source)
    return inp


def _read_table(p: Path, fmt: str, what: str) -> pa.Table:
    """A Parquet file, or a text table with its delimiter sniffed."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return pq.read_table(p)
        parse = _parse_options(p)
        try:
            return pacsv.read_csv(p, parse_options=parse)
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            # A column typed by its first rows holds other things further down
            # (GBIF's wide tables): read every column as text, coordinates included.
            names = pacsv.open_csv(p, parse_options=parse).schema.names
            log.warning("%s: mixed column types (%s); reading every column as text", what, exc)
            text = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            return pacsv.read_csv(p, parse_options=parse, convert_options=text)
    except (OSError, pa.ArrowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        kind = "Parquet" if fmt == "parquet" else "a delimited text table"
        raise ConfigurationError(f"cannot read {what} as {kind}: {first}") from None


def _parse_options(p: Path) -> Any:
    """The delimiter the header line uses most (tab for GBIF); tab-separated text is unquoted.

    GBIF's tab-separated files do not quote fields and hold stray ``"`` in
    free text, so quoting is off for tabs.
    """
    import pyarrow.csv as pacsv

    with p.open("rb") as f:
        header = f.readline(1 << 20).decode("utf-8", "replace")
    delimiter = max(DELIMITERS, key=header.count)
    if header.count(delimiter) == 0:
        delimiter = ","
    if delimiter == "\t":
        return pacsv.ParseOptions(delimiter="\t", quote_char=False)
    return pacsv.ParseOptions(delimiter=delimiter)


def _geo(metadata: Mapping[bytes, bytes] | None) -> dict[str, Any] | None:
    raw = (metadata or {}).get(b"geo")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_csv_columns(inp: PointsInput) -> None:
    """CSV holds only flat columns: refuse lists, structs and maps up front."""
    for field in inp.table.schema:
        if pa.types.is_nested(field.type):
            raise ConfigurationError(
                f"input column {field.name!r} holds {field.type}, which CSV cannot hold; "
                "write .parquet instead"
            )


class TableWriter:
    """Batches of a sampled table into GeoParquet or CSV, renamed into place when complete.

    ``metadata`` (the ``geo`` document and the provenance) goes into a
    Parquet file's schema; CSV has no place for it.
    """

    def __init__(self, path: str | Path, fmt: str, metadata: Mapping[str, str]) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.metadata = dict(metadata)
        self._place = ExitStack()  # holds the hidden file until it is renamed into place
        self.tmp = self._place.enter_context(atomic_path(self.path, kind="partial"))
        self._writer: Any = None
        self.rows = 0

    def write(self, batch: pa.Table) -> None:
        if self.fmt == "csv":
            batch = _as_csv(batch)
        if self._writer is None:
            self._writer = self._open(batch.schema)
        self._writer.write_table(batch) if self.fmt == "parquet" else self._writer.write(batch)
        self.rows += batch.num_rows

    def _open(self, schema: pa.Schema) -> Any:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetWriter(
                self.tmp, schema.with_metadata(self.metadata), compression="zstd"
            )
        import pyarrow.csv as pacsv

        return pacsv.CSVWriter(self.tmp, schema)

    def close(self, empty: pa.Table) -> None:
        """Finish the file and move it into place (``empty``: the schema if no batch came)."""
        if self._writer is None:
            self.write(empty)
        self._writer.close()
        self._place.close()  # renames the complete file into place

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is not None:
            if self._writer is not None:
                with contextlib.suppress(Exception):  # the file is discarded anyway
                    self._writer.close()
            self._place.__exit__(kind, exc, tb)  # deletes the hidden file


def _as_csv(batch: pa.Table) -> pa.Table:
    """The geometry as WKT text, which GDAL's CSV driver and every spreadsheet read."""
    import shapely

    i = batch.schema.get_field_index(GEOMETRY)
    if i < 0:
        return batch
    wkb = batch.column(i).to_numpy(zero_copy_only=False)
    wkt = shapely.to_wkt(shapely.from_wkb(wkb), rounding_precision=-1)
    return batch.set_column(i, GEOMETRY, pa.array(wkt, pa.string()))
