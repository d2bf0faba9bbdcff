"""The model itself: the ViT, the log-mel front end, resampling, the CPU linear path. No I/O."""
