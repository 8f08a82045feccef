"""dapr-workflow-worker's API for your workflows: declare them, and the worker hosts them.

::

    from dapr_workflow_worker import Flows

    flows = Flows()

    @flows.workflow(name="invoice_workflow")
    def invoice(ctx, order: Order): ...

Name the module in ``WORKER_WORKFLOW_MODULES``: the worker registers every `Flows` at its top
level (a module with ``register(registry)`` instead, receiving a `WorkflowRegistry`, still
works). `dapr_workflow_worker.testing` runs them through the worker's line in a test.

Only the names exported here are public: the worker's internals (the package ``worker``) may
change from one version to the next.
"""

from __future__ import annotations

import importlib

try:
    _internals = importlib.import_module("worker.flows")
except ModuleNotFoundError as error:  # a module or package of yours named `worker` comes first
    if error.name not in ("worker", "worker.flows"):
        raise
    shadow = importlib.import_module("worker")
    raise ImportError(
        f"dapr-workflow-worker's internals (the package `worker`) are shadowed by "
        f"{getattr(shadow, '__file__', shadow)!r}: rename that module"
    ) from error

from worker import __version__
from worker.flows import Flows
from worker.hosting import WorkflowRegistry

__all__ = ["Flows", "WorkflowRegistry", "__version__"]
