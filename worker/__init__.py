"""dapr-workflow-worker: control Dapr Workflows by publishing messages."""

__version__ = "0.1.0"
