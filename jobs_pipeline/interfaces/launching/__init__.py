"""Starting a job and reading its outcome: shared by the CLI and the admin API.

Every start goes through the one Dagster instance. Where a daemon serves it, the run
is submitted to its queue, as a schedule's or the UI's would be, and so waits for its
job's turn (`job_lock`), its table's pool and its priority, and is stopped at its
`dagster/max_runtime`; a run worker process of the deployment executes it. Where no
daemon serves the instance (the CLI on a bare database), the run executes in the
calling process on that instance: the pools still keep it from writing a table
another run of the instance writes, and the database's writer lock keeps it from any
other writer. Either way a run's result is read back from the `result` metadata its
step recorded, so whoever started it sees exactly what the Dagster UI shows.

- `plans`: which jobs users run by name, and what a run of one is started with (its
  options checked, refused in the caller's own words);
- `dev_instance`: the instance `jobs-pipeline dev` serves, which the CLI adopts;
- `instance`: the instance opened, its pools prepared;
- `execution`: the run submitted to the queue, or executed here.
"""
