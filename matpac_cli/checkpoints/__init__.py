"""Weights: the registry, downloads, the hash cache, resolving a name or path, reading
checkpoint files, and trained-head files."""
