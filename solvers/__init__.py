"""The back end: Blob, Net, Caffe's layers, fillers, solvers, data sources."""
