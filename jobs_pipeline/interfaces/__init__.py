"""The ways in: the command line, the admin API, and the launcher both use."""
