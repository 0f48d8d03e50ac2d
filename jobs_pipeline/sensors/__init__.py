"""What watches runs: the run-failure, slow-run, waiting-run and heartbeat sensors."""
