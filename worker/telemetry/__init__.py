"""Telemetry set-up outside the core: the OpenTelemetry SDK (traces), metrics and log formats.

The core never imports this package; `python -m worker` wires it from the settings and the
standard ``OTEL_*`` environment variables.
"""
