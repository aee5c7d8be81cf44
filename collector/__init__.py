"""hpc-billing's I/O side: settings, the CLI, the pipeline, Slurm sources, store and web."""

__version__ = "0.1.0"
