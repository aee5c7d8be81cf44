"""The only code that talks to Slurm: the sacct runner, file, slurmrestd and pyslurm sources."""
