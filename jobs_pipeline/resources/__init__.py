"""Dagster resources: the app database, the mailer, the alert channels, the heartbeat pings."""
