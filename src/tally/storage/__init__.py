"""Storage: sources (expand a SOURCE, version each object, cut it into line-aligned ranges, open
a range) and outputs (results, stats and events written atomically), for local files, HTTP and
every fsspec object store.

- :mod:`tally.storage.sources` expands a SOURCE into partition URLs and opens partitions;
- :mod:`tally.storage.ranges` cuts partitions into byte-range tasks and reads one task's lines;
- :mod:`tally.storage.remote` opens HTTP objects and names missing filesystems;
- :mod:`tally.storage.objectstore` and :mod:`tally.storage.object_readers` read object stores;
- :mod:`tally.storage.outputs` writes results, stats and events;
- :mod:`tally.storage.gen_objects` uploads generated data to an object store.
"""
