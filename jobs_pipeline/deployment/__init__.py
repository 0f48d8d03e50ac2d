"""What an operator runs against a deployment: `setup`, `doctor` and the Prometheus metrics."""
