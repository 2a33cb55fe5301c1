"""The exit codes of every ``stocksched`` command and of the daemon: the one table.

0 success; 1 invalid jobs file, failed run, daemon unreachable or server error; 2 usage
error (bad flags or settings, unknown job, refused token, a server refusing to start
with these settings); 3 a run partially succeeded; 4 (run-job) the job is already
running, here or on another replica, so nothing was run; 130 interrupted (Ctrl-C,
SIGTERM during run-job); 141 stdout was closed before everything was written (e.g.
piped into ``head``), the status a shell reports for a process ended by SIGPIPE.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1  # also the daemon's "invalid config" and "cannot start"
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

# A finished run's status as an exit code (run-job, trigger --wait); any other is EXIT_FAIL.
RUN_EXIT = {"success": EXIT_OK, "partial_success": EXIT_PARTIAL}
