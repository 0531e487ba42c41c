"""Prefect flows around the supsup_fin library: the only place that imports Prefect.

Importing this package sets quiet, offline-friendly defaults for Prefect's temporary local
server (no analytics, a generous start-up timeout) unless the user already chose otherwise.
"""

from __future__ import annotations

import os

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "supsup_fin",
}.items():
    os.environ.setdefault(_key, _value)
