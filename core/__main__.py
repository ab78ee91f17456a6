import os
import sys

# Offline first: nothing is fetched from a model hub at run time.
for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
    os.environ.setdefault(key, value)

from core.jobs.cli import main  # noqa: E402

sys.exit(main())
