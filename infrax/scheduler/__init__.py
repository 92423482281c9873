"""The scheduler: central dispatcher of task partitions."""
