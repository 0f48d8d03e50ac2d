"""The Dagster instance's parts: each run worker's sign of life, and what the instance
says about runs, the queue, the pools and the daemons.
"""
