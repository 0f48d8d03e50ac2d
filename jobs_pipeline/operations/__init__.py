"""Operating a deployment: `setup`, `doctor` and the Prometheus metrics."""
