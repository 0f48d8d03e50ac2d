"""The deployed topology's own parts: proof that runs are alive, setting it up, checking it.

- `run_workers`: each run's worker holds a sign of life that the daemon checks, so a run
  whose process died (a SIGKILL, an OOM kill, its code server or host gone) is failed,
  alerted and its place freed, instead of blocking its table for good.
- `status`: what the instance says about runs, the queue, the pools and the daemons;
  read by the waiting-run alert, `doctor` and the Prometheus metrics alike.
- `setup`: `jobs-pipeline setup`, a deployment's storage prepared in one pass.
- `doctor`: `jobs-pipeline doctor`, the 3 a.m. check.
- `metrics`: the Prometheus endpoint.
"""
