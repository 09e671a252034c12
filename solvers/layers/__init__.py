"""Caffe's layer library, grouped by family; importing this fills the registry."""
import importlib

_FAMILIES = ("neuron", "common", "vision", "loss", "recurrent", "data", "python_layer")

for _family in _FAMILIES:
    try:
        importlib.import_module("solvers.layers." + _family)
    except ModuleNotFoundError as _e:  # a family not written yet
        if _e.name != "solvers.layers." + _family:
            raise
