"""The sampling methods of :class:`~tessera_vz.reader.store.TesseraStore`: tables of points.

A mixin of the store, in its own module so the facade stays one screen of
jobs; the work is :mod:`.samples`'. Its modules (and pyarrow) are imported
when a table is sampled, not with the store: reading one point needs
neither, and a cold process would spend longer importing them than reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tessera_vz.reader.point_groups import SAMPLE_BATCH

if TYPE_CHECKING:
    import pyarrow as pa

    from tessera_vz.reader.point_columns import PointsInput
    from tessera_vz.reader.zone_year import ZoneYears


class Sampling:
    """``sample`` and its parts, over the store's zone-years (``_zone_years``)."""

    _zone_years: ZoneYears

    def sample(
        self, points: Any, years: int | Sequence[int] | None = None, *, lon: str | None = None,
        lat: str | None = None, geometry: str | None = None, crs: Any = None,
        year_column: str | None = None, batch_size: int = SAMPLE_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> pa.Table:  # fmt: skip
        """Points as a training table: one row per input row and year, every input column kept.

        ``points`` is a ``pyarrow.Table`` or a pandas / geopandas DataFrame
        (see :func:`~tessera_vz.reader.point_columns.points_input` for where the
        coordinates come from: ``lon``/``lat`` columns, by default named
        ``lon``/``longitude`` and ``lat``/``latitude``, or a point
        ``geometry`` column in ``crs``). Each row gains ``point_id`` (its input
        row), ``year``, ``status`` (``ok``, ``no tile``, ``no data`` for an
        invalid scale, ``invalid coordinate``, ``empty`` for a missing
        coordinate, ``error`` when its tile's source failed), the ``tile``,
        ``row`` and ``col`` read, the dequantised bands ``b000``.. (null unless
        ``ok``) and a ``geometry`` (WKB point, EPSG:4326). Without ``years``
        each observation is read in its own year, from ``year_column``
        (default: a column named ``year``, as GBIF's): one row per input row,
        ``year`` the embedding year read (the input's column is kept as
        ``year_input``), status ``no year`` where the cell is missing or not
        a year and ``year not indexed`` where no zone indexed it — never
        another year's value. Coordinates outside lon [-180, 180] / lat
        [-90, 90] are never read. The schema carries
        GeoParquet 1.1 ``geo`` metadata and the provenance
        (``tessera:versions``, ``tessera:snapshots``), so
        ``pyarrow.parquet.write_table(t, "x.parquet")`` writes GeoParquet.

        Points are read ``batch_size`` at a time (every year of a batch
        concurrently); ``progress(n)`` is called after each batch. For
        tables too big for one result, :meth:`sample_batches` yields the
        batches.
        """
        import pyarrow as pa

        from tessera_vz.reader import point_columns, samples

        year = point_columns.own_year_column(points, years, year_column)
        inp = self.points_input(points, lon=lon, lat=lat, geometry=geometry, crs=crs, year=year)
        provenance = self.sample_provenance(inp, years)
        parts = list(self.sample_batches(inp, years, batch_size=batch_size, progress=progress))
        table = pa.concat_tables(parts) if parts else self.empty_sample(inp, years)
        return samples.with_metadata(table, samples.geo_metadata(inp), provenance)

    def points_input(self, points: Any, **where: Any) -> PointsInput:
        """The coordinates and kept columns of ``points`` (:func:`.point_columns.points_input`)."""
        from tessera_vz.reader.point_columns import points_input

        return points_input(points, **where)

    def sample_batches(
        self, inp: PointsInput, years: int | Sequence[int] | None, *,
        batch_size: int = SAMPLE_BATCH, progress: Callable[[int], None] | None = None,
    ) -> Iterator[pa.Table]:  # fmt: skip
        """The rows of :meth:`sample`, batch by batch (without the file metadata).

        ``inp`` comes from :meth:`points_input`; :meth:`sample_provenance`
        gives the metadata to write with the batches.
        """
        from tessera_vz.reader import samples

        return samples.sample_batches(
            self._zone_years, inp, years, batch_size=batch_size, progress=progress
        )

    def empty_sample(self, inp: PointsInput, years: int | Sequence[int] | None) -> pa.Table:
        """A table of :meth:`sample`'s columns and no rows (for input without points)."""
        from tessera_vz.reader import samples

        return samples.empty_sample(self._zone_years, inp, years)

    def sample_provenance(
        self, inp: PointsInput, years: int | Sequence[int] | None
    ) -> dict[str, str]:
        """Provenance of a sampled table (:func:`.samples.sample_provenance`), before any read."""
        from tessera_vz.reader import samples

        return samples.sample_provenance(self._zone_years, inp, years)
