"""``python -m worker.cli``: the same as the ``wfctl`` console script."""

from __future__ import annotations

from worker.cli.app import main

if __name__ == "__main__":
    main()
