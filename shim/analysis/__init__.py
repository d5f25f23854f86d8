"""Reading comparison logs: statistics, the promotion policy and the report."""
