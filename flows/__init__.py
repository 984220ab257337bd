"""Prefect flows over the DVC pipeline: `pipeline`, `sweep`, `retrain`; the `sclora` command line.

With no PREFECT_API_URL, flows run against Prefect's ephemeral local server, started on
demand with no set-up. Set here, before Prefect is imported, because Prefect reads its
settings once at import; a user's own settings (an API URL, an explicit choice) win.
"""

from __future__ import annotations

import os

if not os.environ.get("PREFECT_API_URL"):
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # Starting the local server takes longer than Prefect's 20 s default on a busy small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
