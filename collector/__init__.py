"""hpc-billing's I/O side: settings, the CLI, the pipeline, Slurm sources, store and web."""

import os as _os

__version__ = "0.1.0"

# The ingest engine's memory settings (docs/design/engine.md §14), set before anything
# imports polars (collector.slurm.columnar, collector.pricing, collector.store.bulk): one
# polars thread (the reading and writing threads already use both cores), and polars'
# jemalloc returning dirty pages after 1 s. A value already in the environment wins.
for _name, _value in (("POLARS_MAX_THREADS", "1"),
                      ("_RJEM_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")):
    _os.environ.setdefault(_name, _value)
