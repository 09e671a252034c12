"""How the spatial coordinates of one NetSpec top map onto another's (pycaffe's caffe.coord_map).

Why: a fully convolutional net (FCN) upsamples its scores with a
Deconvolution and must crop them back onto the input's grid; the offset of
that crop follows from the kernels, strides and pads along the way.
``crop(top_from, top_to)`` works it out and returns the Crop layer.

A map is ``(axis, scale, shift)``: a layer's output coordinate is
``scale * input coordinate + shift`` (a convolution of stride 2: scale 1/2).
``axis`` is the last axis that is *not* spatial (1 for N x C x H x W), or
None for layers that work pointwise and so fit any axis. Scales and shifts
are NumPy arrays, one entry per spatial axis when the layer's parameters
give several (``kernel_size=[3, 5]``), else one.

Layers outside the spatial family (InnerProduct, ...) end the walk; tops
that no walk connects raise ``CoordMapError`` (a RuntimeError, as pycaffe
raises), and a crop that cannot be made (different scales, a negative or
fractional offset) raises ``CropError`` (an AssertionError, as pycaffe's
asserts).
"""
import numpy as np

from netspec.errors import NetSpecError

__all__ = ["PASS_THROUGH_LAYERS", "UndefinedMapException", "AxisMismatchException",
           "CoordMapError", "CropError", "coord_map", "compose", "inverse", "coord_map_from_to",
           "crop"]

# Layers that keep every coordinate where it is.
PASS_THROUGH_LAYERS = frozenset("""
    AbsVal BatchNorm Bias BNLL Dropout Eltwise ELU Log LRN Exp MVN Power ReLU PReLU Scale
    Sigmoid Split TanH Threshold
""".split())

_CONV_LIKE = ("Convolution", "Pooling", "Im2col", "Deconvolution")
_OWN_PARAM = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
              "Im2col": "convolution_param", "Pooling": "pooling_param", "Crop": "crop_param"}
_LEGACY_2D = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")


class UndefinedMapException(NetSpecError):
    """The layer has no coordinate map (it is not spatial): the walk stops there."""


class AxisMismatchException(NetSpecError):
    """Two maps on different axes were composed."""


class CoordMapError(NetSpecError, RuntimeError):
    """No chain of spatial layers connects the two tops."""


class CropError(NetSpecError, AssertionError):
    """The two tops are connected, but no Crop layer can align them."""


def _params(fn):
    """The layer's own parameters, whether given flat or as ``<type>_param=dict(...)``."""
    own = fn.params.get(_OWN_PARAM.get(fn.type_name, ""), None)
    return own if isinstance(own, dict) else fn.params


def _axis_values(params, name, default):
    return np.array(params.get(name, default), ndmin=1)


def _conv_geometry(fn):
    """(axis, stride, effective kernel extent, pad) of a convolution-like layer."""
    params = _params(fn)
    legacy = [k for k in _LEGACY_2D if k in params]
    if legacy:
        raise CropError("%s layer: coordinate maps need kernel_size/stride/pad, not the legacy "
                        "%s" % (fn.type_name, ", ".join(legacy)))
    if "kernel_size" not in params:
        raise CropError("%s layer: coordinate maps need its kernel_size" % fn.type_name)
    kernel = _axis_values(params, "kernel_size", 1)
    dilation = _axis_values(params, "dilation", 1)
    return (params.get("axis", 1), _axis_values(params, "stride", 1), (kernel - 1) * dilation + 1,
            _axis_values(params, "pad", 0))


def coord_map(fn):
    """The (axis, scale, shift) map of one layer (a NetSpec Function)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = _conv_geometry(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = _conv_geometry(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        params = _params(fn)
        # Crop's axis is the first cropped one; the map's is the last one kept.
        return params.get("axis", 2) - 1, 1, -_axis_values(params, "offset", 0)
    raise UndefinedMapException("%s layer has no coordinate map" % fn.type_name)


def compose(base, further):
    """Apply ``further`` after ``base``: scales multiply, the further shift is scaled by the base."""
    ax1, a1, b1 = base
    ax2, a2, b2 = further
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException("coordinate maps on different axes (%s and %s) cannot be "
                                    "composed" % (ax1, ax2))
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(cmap):
    """The map back: de-scale and un-shift."""
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    """The bottoms a map walks through: all of them, except a Crop's reference (second) bottom."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _ancestor_maps(top):
    """{ancestor top: map from ``top``'s coordinates to the ancestor's}, walking spatial layers."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop()
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            if bottom not in maps:
                maps[bottom] = compose(maps[current], step)
                frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s, through their nearest common ancestor."""
    from_maps = _ancestor_maps(top_from)
    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        current = frontier.pop(0)     # breadth first: the nearest common blob
        if current in from_maps:
            return compose(to_maps[current], inverse(from_maps[current]))
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            if bottom not in to_maps:
                to_maps[bottom] = compose(to_maps[current], step)
                frontier.append(bottom)
    raise CoordMapError("could not compute a coordinate map from %r to %r: no chain of spatial "
                        "layers (convolution, pooling, pointwise, crop) connects them"
                        % (top_from, top_to))


def crop(top_from, top_to):
    """A Crop layer (NetSpec top) cutting ``top_from`` to ``top_to``'s size and alignment."""
    from netspec.net_spec import layers as L
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(a == 1):
        raise CropError("crop %r to %r: the scales differ (a = %s); the strides along the way "
                        "must cancel out" % (top_from, top_to, a))
    if not np.all(b <= 0):
        raise CropError("crop %r to %r: the offset would be negative (b = %s): %r is smaller "
                        "than %r" % (top_from, top_to, b, top_from, top_to))
    if not np.all(np.round(b) == b):
        raise CropError("crop %r to %r: the offset is not a whole number (b = %s)"
                        % (top_from, top_to, b))
    axis = 2 if ax is None else ax + 1     # pointwise layers only: crop the spatial axes of N x C x H x W
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis, offset=[int(v) for v in -np.round(b)]))
