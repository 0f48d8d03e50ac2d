"""The trading journal's database maintenance jobs, run on Dagster."""
