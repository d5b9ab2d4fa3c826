"""``python -m memshift.migrate``: moves every legacy SQLite database under an agents
path into PostgreSQL, the migration guide's ``sqlite_to_postgres_migrator.py``.

It is the library's backfill program itself, with the guide's flags (``--postgres-url``,
``--agents-path``, ``--dry-run``, ``--backup``) and environment (``DATABASE_URL``,
``AGENTS_PATH``, ``MIGRATION_BATCH_SIZE``, ``MIGRATION_TIMEOUT``,
``MIGRATION_BACKUP_PATH``), every other option (``--verify``, ``--rollback``,
``--follow``, ``--map``, ...; see ``--help``), the same ``migration_report_<run
id>.json`` and the same exit statuses. Also installed as ``memshift-migrate``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from . import _native

__all__ = ["main"]

PROGRAM = "python -m memshift.migrate"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the migration with ``argv`` (default: the command line) and returns its
    exit status: 0 done, 1 rows failed or differences found, 2 could not run, 3 some
    files could not be used (see ``--help``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    # The program stops cleanly on SIGINT and SIGTERM by itself (after the batch in
    # flight). Python's own SIGINT handler would raise KeyboardInterrupt once it
    # returns, so it is set aside: a signal the program does not take ends the process
    # as it would any command.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _native.run_backfill([PROGRAM, *args])


if __name__ == "__main__":
    sys.exit(main())
