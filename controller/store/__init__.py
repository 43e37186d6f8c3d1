"""Durable state: runs, trials and events in SQLite (WAL); artifacts as files."""
