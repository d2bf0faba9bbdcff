"""The encoder loaded once (Predictor: numpy in, numpy out) and the heads that score its embeddings."""
