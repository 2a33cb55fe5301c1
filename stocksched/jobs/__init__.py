"""The jobs file (jobs.yaml): the job model, loading with positioned errors, the JSON Schema.

``spec`` (``JobSpec``, field types, the interval table), ``loader`` (bytes, YAML 1.2,
``load_jobs_file``; ``yamltree`` walks and builds its node tree), ``check`` (every
problem as ``FILE:LINE:COL: path: message``), ``clashes`` (warnings), ``schema``
(``jobs_file_json_schema``). Not the daemon's settings (``stocksched.settings``, the file
``--config`` names).
"""

from stocksched.jobs.clashes import LatestClash, latest_pointer_clashes
from stocksched.jobs.fields import Duration, Ticker
from stocksched.jobs.loader import (
    MAX_FILE_BYTES,
    JobsFileError,
    LoadedJobs,
    load_jobs_file,
    read_jobs_bytes,
)
from stocksched.jobs.schema import jobs_file_json_schema
from stocksched.jobs.spec import (
    DEFAULT_WINDOW,
    DEFAULTABLE_FIELDS,
    INTRADAY_INTERVALS,
    INTRADAY_LIMIT_DAYS,
    JOB_FIELDS,
    JOB_ID_PATTERN,
    JOB_ID_RE,
    Interval,
    JobSpec,
    merge_defaults,
)

__all__ = [
    "DEFAULTABLE_FIELDS",
    "DEFAULT_WINDOW",
    "INTRADAY_INTERVALS",
    "INTRADAY_LIMIT_DAYS",
    "JOB_FIELDS",
    "JOB_ID_PATTERN",
    "JOB_ID_RE",
    "MAX_FILE_BYTES",
    "Duration",
    "Interval",
    "JobSpec",
    "JobsFileError",
    "LatestClash",
    "LoadedJobs",
    "Ticker",
    "jobs_file_json_schema",
    "latest_pointer_clashes",
    "load_jobs_file",
    "merge_defaults",
    "read_jobs_bytes",
]
