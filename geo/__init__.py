"""The geospatial core: pure, I/O-free functions shared by pipeline and notebooks."""
