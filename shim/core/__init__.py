"""The Shim and its decorator: decisions, admission, the task path, background comparison."""
