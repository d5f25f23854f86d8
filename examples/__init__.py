"""Example call sites that use task-shim."""
