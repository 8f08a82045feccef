"""Makes `my_flows` importable for its tests (pytest puts this directory on sys.path)."""
