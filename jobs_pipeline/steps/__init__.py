"""What every job's step shares: config, results, the guard, batching, writer locks,
scheduling metadata.
"""
