"""Documents finance receives, laid out from billing's plain values (no database, no I/O)."""
