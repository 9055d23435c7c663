"""The geospatial core: pure, I/O-free functions the pipeline, replay and notebooks share."""
