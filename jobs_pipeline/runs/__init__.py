"""Runs on the Dagster instance: each run worker's sign of life, how a run ended, and
where the queue, the pools and the daemons stand.
"""
