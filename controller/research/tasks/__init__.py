"""Task implementations and the preset registry (controller.research.tasks.registry)."""
