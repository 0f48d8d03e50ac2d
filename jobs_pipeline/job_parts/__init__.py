"""The parts every job is built from: bounded batches, the guard and its learned normal,
one writer per table and dry runs, results, priorities and schedules.
"""
