"""Legacy net and solver formats brought up to date, the way Caffe does it.

Caffe never rejects an old file: on reading, ``UpgradeNetAsNeeded`` and
``UpgradeSolverAsNeeded`` (src/caffe/util/upgrade_proto.cpp) rewrite it in
memory, in this order:

1. V0 nets (``layers { layer { type: "conv" ... } }``, separate padding
   layers) become V1 nets;
2. data-layer transformation fields (scale, mean_file, crop_size, mirror) move
   from ``data_param``/``image_data_param``/``window_data_param`` to
   ``transform_param``;
3. V1 nets (``layers {}`` with enum types, ``blobs_lr``, ``weight_decay``)
   become ``layer {}`` with type strings and ``param { lr_mult decay_mult }``;
4. ``input:``/``input_dim:``/``input_shape`` become an Input layer named "input";
5. BatchNorm layers with the three old ParamSpecs get lr_mult and decay_mult 0.

Solvers: ``solver_type: NESTEROV`` becomes ``type: "Nesterov"``.

Each ``upgrade_*`` works in place and says whether it changed anything; pass a
list as ``notes`` to collect one line per step (the tools print them).
"""

import logging

from netspec import caffe_pb2
from netspec.descriptor_compat import is_repeated
from netspec.errors import ProtoError

__all__ = [
    "upgrade_net", "upgrade_solver", "net_needs_upgrade", "solver_needs_upgrade",
    "net_needs_v0_to_v1_upgrade", "net_needs_v1_to_v2_upgrade", "net_needs_data_upgrade",
    "net_needs_input_upgrade", "net_needs_batchnorm_upgrade", "solver_needs_type_upgrade",
    "upgrade_v0_net", "upgrade_net_data_transformation", "upgrade_v1_net",
    "upgrade_net_input", "upgrade_net_batchnorm", "upgrade_solver_type",
    "V1_LAYER_TYPE_NAMES", "V0_LAYER_TYPES", "SOLVER_TYPE_NAMES",
]

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter

# V1 LayerType enum name -> layer type string (UpgradeV1LayerType).
V1_LAYER_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 type string -> V1 LayerType enum name (UpgradeV0LayerType).
V0_LAYER_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# SolverParameter.SolverType enum name -> solver type string.
SOLVER_TYPE_NAMES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

# The *_param messages a V1 layer may carry; each is copied as is to the new layer.
V1_LAYER_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param",
    "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param",
    "pooling_param", "power_param", "relu_param", "sigmoid_param", "softmax_param",
    "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)

# V0 field -> {V0 layer type: (V1 *_param, field there)}; a V0 field set on a
# layer type not listed here is dropped, as Caffe drops it (with a note).
_V0_TYPED_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}

# V0 fields that always went to the data transformation, whatever the type.
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file",
                        "cropsize": "crop_size", "mirror": "mirror"}

# Old transformation fields inside the V1 data layers' own params.
_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_LAYER_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                      "WINDOW_DATA": "window_data_param"}


def _note(notes, text):
    """Report a step: to the caller's list when given, else to the log."""
    if notes is not None:
        notes.append(text)
    else:
        log.info("%s", text)


def _problem(notes, text):
    if notes is not None:
        notes.append("warning: " + text)
    else:
        log.warning("%s", text)


def _v1_type_name(layer):
    return V1.LayerType.Name(layer.type)


def _v1_data_layer_params(net_param):
    """(layer, its data_param/image_data_param/window_data_param) for each V1 data layer."""
    for layer in net_param.layers:
        param_name = _DATA_LAYER_PARAMS.get(_v1_type_name(layer))
        if param_name is not None:
            yield layer, getattr(layer, param_name)


def _set_field(message, field, value):
    """Set ``message.field`` from a value or a sub-message; append if the field is repeated."""
    desc = message.DESCRIPTOR.fields_by_name[field]
    if is_repeated(desc):
        getattr(message, field).append(value)
    elif desc.message_type is not None:
        getattr(message, field).CopyFrom(value)
    else:
        setattr(message, field, value)


# ---------------------------------------------------------------- checks

def net_needs_v0_to_v1_upgrade(net_param):
    """Any V1 ``layers`` entry that wraps a V0 ``layer``."""
    return any(layer.HasField("layer") for layer in net_param.layers)


def net_needs_v1_to_v2_upgrade(net_param):
    """Any V1 ``layers`` entry at all."""
    return len(net_param.layers) > 0


def net_needs_data_upgrade(net_param):
    """Any V1 data layer that keeps scale/mean_file/crop_size/mirror in its own param."""
    return any(param.HasField(f) for _, param in _v1_data_layer_params(net_param)
               for f in _LEGACY_TRANSFORM_FIELDS)


def net_needs_input_upgrade(net_param):
    """Net-level ``input:`` fields, which Caffe turns into an Input layer."""
    return len(net_param.input) > 0


def net_needs_batchnorm_upgrade(net_param):
    """A BatchNorm layer declaring the three ParamSpecs its old definition required."""
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net_param.layer)


def net_needs_upgrade(net_param):
    """Whether reading this net in Caffe would rewrite it."""
    return (net_needs_v0_to_v1_upgrade(net_param) or net_needs_v1_to_v2_upgrade(net_param)
            or net_needs_data_upgrade(net_param) or net_needs_input_upgrade(net_param)
            or net_needs_batchnorm_upgrade(net_param))


def solver_needs_type_upgrade(solver_param):
    """The old ``solver_type`` enum is set."""
    return solver_param.HasField("solver_type")


solver_needs_upgrade = solver_needs_type_upgrade


# ---------------------------------------------------------------- V0 -> V1

def _upgrade_v0_padding_layers(net_param):
    """Fold each V0 "padding" layer into the conv/pool layer it feeds (as its pad)."""
    old_layers = list(net_param.layers)
    last_producer = {name: -1 for name in net_param.input}
    kept = []
    for i, connection in enumerate(old_layers):
        v0 = connection.layer
        if v0.type != "padding":
            new = V1()
            new.CopyFrom(connection)
            kept.append(new)
        for j, blob_name in enumerate(connection.bottom):
            if blob_name not in last_producer:
                raise ProtoError(f"V0 net upgrade: layer {v0.name!r} takes unknown blob "
                                 f"{blob_name!r} as bottom {j}; no earlier layer or input makes it")
            source_idx = last_producer[blob_name]
            if source_idx == -1:
                continue
            source = old_layers[source_idx]
            if source.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise ProtoError(f"V0 net upgrade: padding layer {source.layer.name!r} feeds "
                                 f"layer {v0.name!r} of type {v0.type!r}; only conv and pool "
                                 f"layers can absorb a padding layer")
            if len(connection.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise ProtoError(f"V0 net upgrade: padding layer {source.layer.name!r} and layer "
                                 f"{v0.name!r} must each have exactly one bottom (and the padding "
                                 f"layer one top) to be merged")
            kept[-1].layer.pad = source.layer.pad
            kept[-1].bottom[j] = source.bottom[0]
        for blob_name in connection.top:
            last_producer[blob_name] = i
    del net_param.layers[:]
    net_param.layers.extend(kept)


def _upgrade_v0_layer(connection, notes):
    """One V0 layer (wrapped in a V1 ``layers`` entry) as a plain V1 layer."""
    out = V1()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    layer_type = v0.type
    if v0.HasField("type"):
        if layer_type not in V0_LAYER_TYPES:
            raise ProtoError(f"V0 net upgrade: layer {v0.name!r} has unknown V0 type "
                             f"{layer_type!r}; known types: {', '.join(sorted(V0_LAYER_TYPES))}")
        out.type = V1.LayerType.Value(V0_LAYER_TYPES[layer_type])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_TYPED_FIELDS.items():
        if not v0.HasField(field):
            continue
        if layer_type not in targets:
            _problem(notes, f"layer {v0.name!r}: V0 parameter {field} has no meaning for "
                            f"type {layer_type!r}; dropped")
            continue
        param_name, target = targets[layer_type]
        param = getattr(out, param_name)
        if target is None:
            param.CopyFrom(getattr(v0, field))
        else:
            _set_field(param, target, getattr(v0, field))
    for field, target in _V0_TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(out.transform_param, target, getattr(v0, field))
    return out


def upgrade_v0_net(net_param, notes=None):
    """V0 layers (``layers { layer {...} }``) -> V1 layers; padding layers folded in."""
    _upgrade_v0_padding_layers(net_param)
    upgraded = [_upgrade_v0_layer(connection, notes) for connection in net_param.layers]
    keep = {f: getattr(net_param, f) for f in ("name", "force_backward") if net_param.HasField(f)}
    inputs, input_dims = list(net_param.input), list(net_param.input_dim)
    net_param.Clear()
    for f, value in keep.items():
        setattr(net_param, f, value)
    net_param.layers.extend(upgraded)
    net_param.input.extend(inputs)
    net_param.input_dim.extend(input_dims)


# ---------------------------------------------------------------- data transformation

def upgrade_net_data_transformation(net_param):
    """Move old scale/mean_file/crop_size/mirror of V1 data layers into transform_param."""
    for layer, param in _v1_data_layer_params(net_param):
        for field in _LEGACY_TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# ---------------------------------------------------------------- V1 -> V2

def _upgrade_v1_layer(v1, notes):
    """One V1 layer as a LayerParameter (type string, ParamSpecs)."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        enum_name = _v1_type_name(v1)
        if enum_name not in V1_LAYER_TYPE_NAMES:
            raise ProtoError(f"V1 net upgrade: layer {v1.name!r} has V1 type {enum_name} that "
                             f"has no modern equivalent")
        layer.type = V1_LAYER_TYPE_NAMES[enum_name]
    layer.blobs.extend(v1.blobs)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for param_name in V1_LAYER_PARAMS:
        if v1.HasField(param_name):
            getattr(layer, param_name).CopyFrom(getattr(v1, param_name))
    if v1.HasField("layer"):
        _problem(notes, f"layer {v1.name!r}: V1 layer still holds a V0 layer; ignored")
    return layer


def upgrade_v1_net(net_param, notes=None):
    """V1 ``layers {}`` -> ``layer {}``; existing ``layer {}`` entries are dropped as Caffe does."""
    if len(net_param.layer) > 0:
        _problem(notes, "net has both 'layers' (V1) and 'layer' entries; the 'layer' entries "
                        "are dropped by the upgrade, as Caffe drops them")
    upgraded = [_upgrade_v1_layer(v1, notes) for v1 in net_param.layers]
    del net_param.layers[:]
    del net_param.layer[:]
    net_param.layer.extend(upgraded)


# ---------------------------------------------------------------- inputs

def upgrade_net_input(net_param):
    """``input``/``input_dim``/``input_shape`` -> one Input layer named "input", first in the net.

    A net with ``input`` names but no shapes (old caffemodels) just loses the fields.
    """
    n_inputs = len(net_param.input)
    has_shape = len(net_param.input_shape) > 0
    has_dim = len(net_param.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net_param.input_shape) != n_inputs:
            raise ProtoError(f"net {net_param.name!r}: {n_inputs} input(s) but "
                             f"{len(net_param.input_shape)} input_shape entries; give one "
                             f"input_shape per input")
        if not has_shape and len(net_param.input_dim) != 4 * n_inputs:
            raise ProtoError(f"net {net_param.name!r}: {n_inputs} input(s) need "
                             f"{4 * n_inputs} input_dim values (4 per input), found "
                             f"{len(net_param.input_dim)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net_param.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net_param.input_shape[i])
            else:
                shape.dim.extend(net_param.input_dim[4 * i:4 * i + 4])
        existing = list(net_param.layer)
        del net_param.layer[:]
        net_param.layer.extend([layer] + existing)
    net_param.ClearField("input")
    net_param.ClearField("input_shape")
    net_param.ClearField("input_dim")


# ---------------------------------------------------------------- BatchNorm

def upgrade_net_batchnorm(net_param):
    """Old BatchNorm nets froze the three statistics blobs with lr_mult 0; make that explicit."""
    for layer in net_param.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# ---------------------------------------------------------------- all together

def upgrade_net(net_param, notes=None):
    """Upgrade a NetParameter in place as Caffe's UpgradeNetAsNeeded; True if anything changed."""
    changed = False
    if net_needs_v0_to_v1_upgrade(net_param):
        upgrade_v0_net(net_param, notes)
        _note(notes, "upgraded V0 layers (layers { layer {...} }) to V1 layers")
        changed = True
    if net_needs_data_upgrade(net_param):
        upgrade_net_data_transformation(net_param)
        _note(notes, "moved data-layer scale/mean_file/crop_size/mirror into transform_param")
        changed = True
    if net_needs_v1_to_v2_upgrade(net_param):
        upgrade_v1_net(net_param, notes)
        _note(notes, "upgraded V1 'layers' (enum types, blobs_lr, weight_decay) to 'layer' "
                     "(type strings, param { lr_mult decay_mult })")
        changed = True
    if net_needs_input_upgrade(net_param):
        upgrade_net_input(net_param)
        _note(notes, "turned input/input_dim/input_shape fields into an Input layer")
        changed = True
    if net_needs_batchnorm_upgrade(net_param):
        upgrade_net_batchnorm(net_param)
        _note(notes, "set lr_mult and decay_mult to 0 in BatchNorm layers' legacy param specs")
        changed = True
    return changed


def upgrade_solver_type(solver_param):
    """``solver_type`` enum -> ``type`` string; both set at once is an error, as in Caffe."""
    if not solver_param.HasField("solver_type"):
        return False
    if solver_param.HasField("type"):
        raise ProtoError(f"solver sets both the old 'solver_type: "
                         f"{caffe_pb2.SolverParameter.SolverType.Name(solver_param.solver_type)}' "
                         f"and the new 'type: \"{solver_param.type}\"'; keep only 'type'")
    enum_name = caffe_pb2.SolverParameter.SolverType.Name(solver_param.solver_type)
    solver_param.type = SOLVER_TYPE_NAMES[enum_name]
    solver_param.ClearField("solver_type")
    return True


def upgrade_solver(solver_param, notes=None):
    """Upgrade a SolverParameter in place as Caffe's UpgradeSolverAsNeeded; True if changed."""
    if solver_needs_type_upgrade(solver_param):
        old = caffe_pb2.SolverParameter.SolverType.Name(solver_param.solver_type)
        upgrade_solver_type(solver_param)
        _note(notes, f"upgraded solver_type: {old} to type: \"{solver_param.type}\"")
        return True
    return False
