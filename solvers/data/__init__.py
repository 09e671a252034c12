"""Data sources: IDX/MNIST files, Datum records, LMDB reading and writing, transforms.

The pieces the data layers and the data tools share:

* ``idx``          -- MNIST's IDX files (gzipped or not)
* ``datum``        -- Datum <-> C x H x W arrays (raw, float, PNG/JPEG-encoded)
* ``lmdb_source``  -- LMDB read in Caffe's order; atomic, growing writer
* ``transformer``  -- Caffe's DataTransformer (scale, mean, crop, mirror), batched
* ``sources``/``prefetch`` -- batch producers and the background prefetch thread
* ``window``       -- WindowData's window file and warped windows (R-CNN style)
* ``mnist``, ``imageset``, ``image_mean``, ``download`` -- library side of the tools
"""
