"""What both the reader and the indexer stand on; imports nothing of theirs.

- facts and rules: :mod:`.errors`, :mod:`.npy` (``.npy`` headers),
  :mod:`.geometry`, :mod:`.coords` (lon/lat and box validation),
  :mod:`.layout`, :mod:`.quantisation`, :mod:`.table` (the tiles table),
  :mod:`.checksums`, :mod:`.dataset` (a run's version and variant);
- where things are and how they are reached: :mod:`.urls`, :mod:`.options`,
  :mod:`.s3`, :mod:`.repos` (Icechunk repositories and their containers),
  :mod:`.published` (published repositories read through the boundary);
- what an index may make us contact: :mod:`.permissions`, :mod:`.addresses`;
  untrusted text made inert: :mod:`.text`;
- the byte boundary: :mod:`.boundary` (:class:`~.boundary.SourceFiles`:
  authorisation, retries, limits, errors) over one
  :class:`~.transport.Transport` per source root (:mod:`.transport_http` on
  :mod:`.http` and :mod:`.byteranges`; :mod:`.transport_store` on obstore);
- writing and reporting: :mod:`.files` (atomic writes, the lock),
  :mod:`.geoparquet`, :mod:`.progress`;
- running it: :mod:`.loop` (the event loop synchronous callers use),
  :mod:`.shutdown`, :mod:`.lazy` (package faces that import on demand).

Importing this package loads none of its modules.
"""
