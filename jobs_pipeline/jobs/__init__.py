"""One module per job: its config, op, job, schedule and SQL together."""
