"""Which Source the settings ask for: the one place that turns settings into a source.

Shared by the CLI's one-shot commands and the daemon's scheduler, so both build sources
the same way. Sources are imported lazily: pyslurm, for one, is an optional extra.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from collector.settings import Settings, SettingsError
from collector.slurm.source import Source


def make_source(settings: Settings) -> Source:
    if settings.source == "file":
        from collector.slurm.filesource import FileSource

        if settings.input is None:
            raise SettingsError(["HPC_BILLING_INPUT / --input: required with the file source"])
        return FileSource(settings.input, tz=ZoneInfo(settings.timezone), cluster=settings.cluster)
    if settings.source == "sacct":
        from collector.slurm.sacct import SacctSource

        return SacctSource(sacct_path=settings.sacct, timeout_s=settings.sacct_timeout_s,
                           cluster=settings.cluster)
    if settings.source == "slurmrestd":
        from collector.slurm.restsource import SlurmrestdSource

        if settings.slurmrestd_url is None:
            raise SettingsError(["HPC_BILLING_SLURMRESTD_URL / --slurmrestd-url: required with "
                                 "the slurmrestd source"])
        return SlurmrestdSource(url=settings.slurmrestd_url, user=settings.slurmrestd_user,
                                token=settings.slurmrestd_token,
                                token_file=settings.slurmrestd_token_file,
                                timeout_s=settings.slurmrestd_timeout_s, cluster=settings.cluster,
                                server_timezone=settings.slurmrestd_timezone)
    if settings.source == "pyslurm":
        from collector.slurm.pyslurmsource import PyslurmSource

        return PyslurmSource(cluster=settings.cluster)
    raise SettingsError([f"HPC_BILLING_SOURCE: the {settings.source} source is not available"])
