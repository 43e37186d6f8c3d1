"""Level 1.5, the config loop: bounded adjustments of what Level 1 searches."""
