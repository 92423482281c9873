"""The optimizer: which tasks run, on which container types, in how many partitions, in what order."""
