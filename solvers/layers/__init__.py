"""Caffe's layer library, grouped by family; importing this fills the registry."""
from solvers.layers import (  # noqa: F401
    common,
    data,
    loss,
    neuron,
    python_layer,
    recurrent,
    vision,
)
