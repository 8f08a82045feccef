"""``wfctl``: the command-line client for pipelines and operators.

It publishes the worker's messages through a local Dapr sidecar and, with ``--wait``, listens on
the status topic (a Dapr streaming subscription: no app port) for the outcome, ending with an
exit code a pipeline can branch on. Built on the core's models (`worker.messages` validates
before publishing, `worker.events.StatusEvent` parses what comes back); the core never imports
this package.
"""
