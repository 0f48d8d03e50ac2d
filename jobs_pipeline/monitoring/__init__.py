"""The sensors that watch every job's runs: failures, slow and waiting runs, heartbeats.
A job's own schedule and sensors live with the job.
"""
