"""From a folder to per-file results: discovery -> audio -> feed -> chunking -> assemble."""
