"""The bottom layer: errors, located YAML, task names, the per-request context and
cf-orch's configuration files. It imports nothing else of task-shim."""
