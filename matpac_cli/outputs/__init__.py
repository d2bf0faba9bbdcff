"""Writers and readers of matpac's outputs (npy, csv, jsonl, parquet, manifest),
the names of the files that go together (`naming`) and the rules every output path follows."""
