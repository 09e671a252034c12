"""Front end: NetSpec DSL, Caffe schema bindings (caffe_pb2), prototxt I/O."""
