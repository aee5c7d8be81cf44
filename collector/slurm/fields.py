"""The sacct fields hpc-billing asks for: one tuple shared by the argv and the parser.

Every name is accepted by Slurm 22.05's ``sacct --format`` (``sacct --helpformat``;
22.05 rejects ArrayJobID, ArrayTaskID, HetJobID and Restarts, and one unknown field fails
the whole command). Free-text fields we do not need (SubmitLine, WorkDir, Comment) are
left out; JobName, the one free-text field we keep, is last so that a stray delimiter or
newline inside it can only ever spill into the end of the record.
"""

SACCT_FIELDS: tuple[str, ...] = (
    "JobID", "JobIDRaw", "Cluster", "Partition", "Account", "User", "UID", "Group",
    "QOS", "WCKey", "Reservation", "State", "ExitCode", "DerivedExitCode",
    "Submit", "Eligible", "Start", "End", "ElapsedRaw", "TimelimitRaw",
    "NNodes", "NCPUS", "AllocTRES", "TRESUsageInTot", "CPUTimeRAW", "TotalCPU",
    "MaxRSS", "ConsumedEnergyRaw", "NodeList", "DBIndex", "JobName",
)

# ASCII unit separator: cannot appear in a job name typed on a command line in practice,
# unlike "|" (sacct -P escapes nothing; see samples/delimiter-hazards.txt).
SACCT_DELIMITER = "\x1f"

# Columns without which a record has no identity.
REQUIRED_FIELDS: tuple[str, ...] = ("JobID", "JobIDRaw", "Submit", "State")

# Free-text columns: the only ones a stray delimiter can come from. Constraints is one:
# `--constraint "intel|amd"` is legal Slurm syntax. Reason is not: it holds Slurm's own
# fixed words (None, Resources, BeginTime ...).
FREE_TEXT_FIELDS: frozenset[str] = frozenset(
    {"JobName", "SubmitLine", "WorkDir", "Comment", "AdminComment", "SystemComment",
     "Constraints"})
