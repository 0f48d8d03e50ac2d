"""The operators' tools that run as Dagster jobs: undo one run, and forecast tonight's."""
