"""Comparators for task-shim: model choice, latency and output structure.

The comparators arrive with the decorator; this package is their home.
"""

__all__: list[str] = []
