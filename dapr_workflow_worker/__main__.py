"""``python -m dapr_workflow_worker``: the worker, as ``python -m worker`` and the console
script ``dapr-workflow-worker`` run it."""

from __future__ import annotations

import sys

from worker.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
