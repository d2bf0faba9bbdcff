"""Writers and readers of matpac's outputs (npy, csv, jsonl, parquet, manifest, journal)
and the rules every output path follows."""
