"""Acting on flags: promote, roll back, watch, status and check."""
