"""The emails' templates and their rendering."""
