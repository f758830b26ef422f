"""Prefect flows, one per pipeline stage (`python -m flows.<stage>`), plus operational jobs.

Flows are thin: they load the config, map library calls over a task runner and log through
Prefect. All logic lives in the `diffenhance` library.
"""

import logging
import os

# The library logs to the "diffenhance" logger; inside a flow run Prefect captures it too.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "diffenhance")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Library code may log outside a flow run (e.g. from the CLI); that is not a problem to warn about.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# A lone `python -m flows.<stage>` (no PREFECT_API_URL) starts Prefect's temporary server;
# its 20 s startup limit is too short on a busy 2-core machine (flows/server.py's QUIET_ENV).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect.settings import PREFECT_LOGGING_LEVEL  # noqa: E402 - reads the settings above

# PREFECT_LOGGING_EXTRA_LOGGERS gives the "diffenhance" logger Prefect's handlers, not its level:
# at the root's WARNING it dropped every INFO line of a flow run ("resuming from step N",
# "val PSNR"). Lowered to Prefect's level, never raised (a test may capture DEBUG).
_library = logging.getLogger("diffenhance")
if _library.getEffectiveLevel() > logging.getLevelName(PREFECT_LOGGING_LEVEL.value()):
    _library.setLevel(PREFECT_LOGGING_LEVEL.value())
