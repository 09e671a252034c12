"""Export a Caffe net with its weights to an ONNX model, exactly.

The net is built here first (``solvers.net.Net``, TEST phase), so every blob
has its shape and every layer its loaded parameters; each layer is then
written as the ONNX operators that compute what Caffe computes, with no
approximation. A layer that ONNX cannot express exactly is an error naming
it. This lives in ``solvers/`` and not in ``netspec/`` because it needs the
built net (blob shapes, parameter arrays), which is the back end's.

Train nets are accepted: ``deploy_param`` derives the deploy form as a Caffe
user does by hand (data layers become Input layers with the shapes their
tops have, losses and Accuracy are dropped, SoftmaxWithLoss becomes a
Softmax named ``prob``).

Where Caffe's and ONNX's operators differ the export composes exact ones:

* Pooling: Caffe's ceil-rounded, clipped output size is written as explicit
  (possibly asymmetric) pads with floor rounding; AVE divides by the window
  clipped to the padded input, so a zero Pad of Caffe's pad runs first and
  the AveragePool then excludes only what lies beyond it.
* LRN WITHIN_CHANNEL: square, zero-padded AveragePool, power, product, as
  Caffe's own decomposition.
* ArgMax: Caffe puts the larger index first among equal values; TopK the
  smaller, so the axis is reversed around TopK.
* RNN and LSTM: unrolled over the T time steps with Caffe's gate order
  (i, f, o, g) and its ``cont`` input applied at every step; the ONNX model
  starts from zero state at each run (as the toolkit's first forward; every
  forward equals it when cont_0 = 0, which starts each sequence).
"""
import logging
import os

import numpy as np

from netspec import caffe_pb2
from netspec.errors import CaffeError
from netspec.io import atomic_write_bytes, read_net
from solvers.net_state import filter_net

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
MIN_OPSET = 13
BATCH = "N"   # the symbolic batch dimension with dynamic_batch

DATA_TYPES = ("Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData")
DROPPED_TYPES = ("Accuracy",)


def unique_name(base, taken):
    """``base``, or ``base_K`` with the first K that ``taken`` lacks; the name is added to ``taken``
    (ONNX graphs and Caffe nets both need unique names; export and import share this)."""
    name, k = base, 1
    while name in taken:
        name = "%s_%d" % (base, k)
        k += 1
    taken.add(name)
    return name


class OnnxExportError(CaffeError):
    """A net or layer cannot be written as an exact ONNX model."""


def require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise OnnxExportError("ONNX export needs the onnx package: pip install 'caffe-toolkit[onnx]' "
                              "(or pip install onnx onnxruntime)") from None


# -- deploy form ----------------------------------------------------------------

def _is_loss(lp):
    return lp.type.endswith("Loss")


def _data_top_shapes(lp):
    """Top shapes of a data layer, by setting it up alone (it reads its source)."""
    from solvers.blob import Blob
    from solvers.layer import create_layer
    layer = create_layer(lp)
    tops = [Blob((1,)) for _ in lp.top]
    layer.setup([], tops)
    return [tuple(t.shape) for t in tops]


def deploy_param(net_param, input_shapes=None):
    """The deploy (TEST-phase, inputs-only) form of a net: a new NetParameter.

    ``input_shapes``: {top name: shape} overriding Input/data layer shapes
    (needed for a data layer whose source cannot be read here).
    Returns (NetParameter, notes) where notes say what was dropped or changed.
    """
    input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net_param)
    param.state.phase = caffe_pb2.TEST
    param = filter_net(param)
    for lp in param.layer:
        lp.ClearField("phase")     # the deploy form runs every layer as in TEST (Dropout: identity)
    notes, kept, dropped_reads = [], [], set()
    taken = {t for lp in param.layer for t in lp.top}
    for lp in param.layer:
        if lp.type == "SoftmaxWithLoss":
            top = "prob" if "prob" not in taken else lp.name + "_prob"
            taken.add(top)
            new = caffe_pb2.LayerParameter(name=lp.name, type="Softmax", bottom=lp.bottom[:1], top=[top])
            if lp.HasField("softmax_param"):
                new.softmax_param.CopyFrom(lp.softmax_param)
            notes.append("loss layer %r (SoftmaxWithLoss) became a Softmax with top %r" % (lp.name, top))
            kept.append(new)
            dropped_reads.update(lp.bottom[1:])
        elif _is_loss(lp) or lp.type in DROPPED_TYPES:
            notes.append("layer %r (%s) dropped" % (lp.name, lp.type))
            dropped_reads.update(lp.bottom)
        else:
            kept.append(lp)
    kept = _drop_dead_splits(kept, dropped_reads)
    used = {b for lp in kept for b in lp.bottom}
    unread = dropped_reads - used       # labels: read only by what was dropped
    layers = []
    for lp in kept:
        if lp.type in DATA_TYPES or (lp.type == "Python" and not lp.bottom):
            layers.append(_data_to_input(lp, unread, input_shapes, notes))
        elif lp.type == "Input":
            new = caffe_pb2.LayerParameter()
            new.CopyFrom(lp)
            for j, t in enumerate(lp.top):
                if t in input_shapes:
                    while len(new.input_param.shape) <= j:
                        new.input_param.shape.add()
                    del new.input_param.shape[j].dim[:]
                    new.input_param.shape[j].dim.extend(input_shapes[t])
            layers.append(new)
        else:
            layers.append(lp)
    layers = _drop_unused_inputs(layers, unread, notes)
    known = [t for lp in param.layer if lp.type in DATA_TYPES + ("Input",) or (lp.type == "Python" and not lp.bottom)
             for t in lp.top]
    unknown = set(input_shapes) - set(known)
    if unknown:
        raise OnnxExportError("input shape given for %s, but the net has no such input; inputs: %s"
                              % (", ".join(sorted(unknown)), ", ".join(known)))
    del param.layer[:]
    param.layer.extend(layers)
    del param.input[:], param.input_shape[:], param.input_dim[:]
    return param, notes


def _drop_dead_splits(layers, dropped_reads):
    """Drop Split layers (those a built net inserts too) whose tops only dropped layers read."""
    while True:
        used = {b for lp in layers for b in lp.bottom}
        dead = [lp for lp in layers if lp.type == "Split" and not any(t in used for t in lp.top)
                and any(t in dropped_reads for t in lp.top)]
        if not dead:
            return layers
        for lp in dead:
            dropped_reads.update(lp.bottom)
        layers = [lp for lp in layers if all(lp is not d for d in dead)]


def _data_to_input(lp, unread, input_shapes, notes):
    """An Input layer in place of data layer ``lp`` (its tops in ``unread`` are left out)."""
    shapes = {}
    missing = [t for t in lp.top if t not in unread and t not in input_shapes]
    if missing:
        try:
            shapes = dict(zip(lp.top, _data_top_shapes(lp)))
        except CaffeError as e:
            raise OnnxExportError(
                "layer %r (type %s): cannot read its data source to learn the shape of top %r (%s); "
                "give the shape, e.g. --input-shape %s:1,3,224,224" % (lp.name, lp.type, missing[0], e, missing[0])) \
                from None
    new = caffe_pb2.LayerParameter(name=lp.name, type="Input")
    for t in lp.top:
        if t not in unread:
            new.top.append(t)
            new.input_param.shape.add().dim.extend(input_shapes.get(t, shapes.get(t)))
        else:
            notes.append("top %r of data layer %r dropped (only losses or accuracy read it)" % (t, lp.name))
    notes.append("data layer %r (%s) became an Input layer" % (lp.name, lp.type))
    return new


def _drop_unused_inputs(layers, unread, notes):
    """Remove Input tops (labels) that only dropped layers read."""
    out = []
    for lp in layers:
        if lp.type == "Input" and any(t in unread for t in lp.top):
            keep = [j for j, t in enumerate(lp.top) if t not in unread]
            for j, t in enumerate(lp.top):
                if j not in keep:
                    notes.append("input %r dropped (only losses or accuracy read it)" % t)
            if not keep:
                continue
            new = caffe_pb2.LayerParameter(name=lp.name, type="Input")
            new.top.extend(lp.top[j] for j in keep)
            for j in keep:
                new.input_param.shape.add().CopyFrom(
                    lp.input_param.shape[j if len(lp.input_param.shape) > 1 else 0])
            lp = new
        out.append(lp)
    return out


def deploy_net(net_param, weights=None, input_shapes=None):
    """(Net, notes): the built TEST-phase deploy net, weights loaded."""
    from solvers.net import Net
    param, notes = deploy_param(net_param, input_shapes)
    net = Net(param, phase="TEST")
    if weights is not None:
        net.copy_from(weights)
    return net, notes


# -- the graph under construction -------------------------------------------------

class _Graph:
    """Nodes, initializers and unique tensor names of the ONNX graph being written."""

    def __init__(self, opset):
        from onnx import helper
        self.helper = helper
        self.opset = opset
        self.nodes, self.inits = [], []
        self.names = set()

    def fresh(self, hint):
        return unique_name(hint, self.names)

    def const(self, hint, value, dtype=np.float32):
        from onnx import numpy_helper
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, hint, values):
        return self.const(hint, np.asarray(values, np.int64).reshape(-1), np.int64)

    def op(self, op_type, inputs, hint, outputs=1, out_names=None, **attrs):
        """Add a node; returns its output name (or list of names when outputs > 1)."""
        hint = hint or out_names[0]
        outs = out_names or [self.fresh("%s_%d" % (hint, i) if outputs > 1 else hint)
                             for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=self.fresh("node_" + hint),
                                                **attrs))
        return outs if outputs > 1 or out_names else outs[0]

    # operators whose form changed with the opset
    def reduce(self, op_type, x, axes, hint, keepdims=0):
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.ints(hint + "_axes", axes)], hint, keepdims=keepdims)
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=keepdims)

    def split(self, x, axis, sizes, hint, out_names=None):
        return self.op("Split", [x, self.ints(hint + "_sizes", sizes)], hint, outputs=len(sizes),
                       out_names=out_names, axis=axis)

    def unsqueeze(self, x, axes, hint):
        return self.op("Unsqueeze", [x, self.ints(hint + "_axes", axes)], hint)

    def reshape(self, x, shape, hint):
        return self.op("Reshape", [x, self.ints(hint + "_shape", shape)], hint)

    def slice(self, x, starts, ends, axes, hint, steps=None):
        ins = [x, self.ints(hint + "_starts", starts), self.ints(hint + "_ends", ends),
               self.ints(hint + "_axes", axes)]
        if steps is not None:
            ins.append(self.ints(hint + "_steps", steps))
        return self.op("Slice", ins, hint)


# -- the exporter ------------------------------------------------------------------

class _Exporter:
    """Walks a built Net layer by layer and writes each as ONNX nodes."""

    def __init__(self, net, opset, dynamic_batch, extra_outputs=()):
        self.net, self.dynamic = net, dynamic_batch
        self.extra_outputs = [b for b in extra_outputs if b not in net.outputs]
        self.g = _Graph(opset)
        self.tensor = {}            # Caffe blob name -> ONNX tensor holding its current value
        self.writes = {}            # blob name -> how many layers still write it
        for i in range(len(net.layers)):
            lp = net.net_param.layer[i]
            if lp.type in ("Split",):
                continue
            for t in net.top_names[net.layer_names[i]]:
                self.writes[t] = self.writes.get(t, 0) + 1
        self.g.names.update(net.blobs)

    # naming: the last write of a blob gets the blob's own name
    def out_name(self, blob):
        self.writes[blob] -= 1
        if self.writes[blob] == 0:
            return blob
        return self.g.fresh(blob + "_v")

    def shape(self, blob):
        return tuple(self.net.blobs[blob].shape)

    def batch_dims(self, shape):
        """A Reshape target for a static shape: dim 0 copied from the input (0) when batch is dynamic."""
        s = list(shape)
        if self.dynamic and s:
            s[0] = 0
        return s

    def error(self, lp, msg):
        return OnnxExportError("layer %r (type %s): %s" % (lp.name, lp.type, msg))

    def run(self):
        from onnx import TensorProto, helper
        net, g = self.net, self.g
        inputs, outputs = [], []
        for i, layer in enumerate(net.layers):
            lp = net.net_param.layer[i]
            name = net.layer_names[i]
            bottoms, tops = net.bottom_names[name], net.top_names[name]
            if lp.type == "Input":
                for t in tops:
                    dims = list(self.shape(t))
                    if self.dynamic and dims:
                        dims[0] = BATCH
                    out = self.out_name(t)
                    inputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, dims))
                    self.tensor[t] = out
                continue
            method = getattr(self, "layer_" + lp.type, None)
            if method is None:
                raise self.error(lp, "no exact ONNX form is known for this layer type; remove the "
                                 "layer or replace it with supported ones before exporting")
            xs = [self.tensor[b] for b in bottoms]
            results = method(lp, layer, xs, bottoms, tops)
            if results is None:
                continue
            if not isinstance(results, (list, tuple)):
                results = [results]
            for t, r in zip(tops, results):
                self.tensor[t] = r
        for o in list(net.outputs) + self.extra_outputs:
            if o not in self.tensor:
                raise OnnxExportError("blob %r is no output of any layer exported" % o)
            if self.tensor[o] != o:   # an output that is another blob's value (a Split top)
                g.op("Identity", [self.tensor[o]], o, out_names=[o])
            dims = list(self.shape(o))
            if self.dynamic and dims:
                dims[0] = BATCH
            outputs.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, dims))
        graph = helper.make_graph(g.nodes, net.name or "caffe_net", inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)],
                                  producer_name="caffe-toolkit")
        model.ir_version = min(model.ir_version, 8 if g.opset <= 18 else model.ir_version)
        return model

    def emit(self, op_type, inputs, top, **attrs):
        """One node writing Caffe blob ``top``."""
        return self.g.op(op_type, inputs, None, out_names=[self.out_name(top)], **attrs)[0]

    def finish(self, x, top):
        """Give an intermediate tensor the name of Caffe blob ``top``."""
        return self.emit("Identity", [x], top)

    def params(self, layer):
        return [b.data.astype(np.float32) for b in layer.blobs]

    # -- vision -----------------------------------------------------------------
    def _conv_geometry(self, lp, layer):
        geo, p = layer.geo, lp.convolution_param
        if geo.channel_axis != 1:
            raise self.error(lp, "convolution_param.axis %d: only axis 1 (channels) is supported" % p.axis)
        return dict(kernel_shape=list(geo.kernel), strides=list(geo.stride), pads=list(geo.pad) * 2,
                    dilations=list(geo.dilation), group=p.group)

    def layer_Convolution(self, lp, layer, xs, bottoms, tops, op_type="Conv"):
        w = self.params(layer)
        attrs = self._conv_geometry(lp, layer)
        ins = [self.g.const(lp.name + "_W", w[0])]
        if lp.convolution_param.bias_term:
            ins.append(self.g.const(lp.name + "_B", w[1]))
        return [self.emit(op_type, [x] + ins, t, **attrs) for x, t in zip(xs, tops)]

    def layer_Deconvolution(self, lp, layer, xs, bottoms, tops):
        return self.layer_Convolution(lp, layer, xs, bottoms, tops, op_type="ConvTranspose")

    def layer_InnerProduct(self, lp, layer, xs, bottoms, tops):
        p = lp.inner_product_param
        w = self.params(layer)
        shape = self.shape(bottoms[0])
        axis = p.axis % len(shape)
        weight = w[0] if not p.transpose else w[0].T   # (num_output, K)
        if axis == 1:
            flat = self.g.op("Flatten", [xs[0]], lp.name + "_flat", axis=1) if len(shape) > 2 else xs[0]
            ins = [flat, self.g.const(lp.name + "_W", weight)]
            if p.bias_term:
                ins.append(self.g.const(lp.name + "_B", w[1]))
            return self.emit("Gemm", ins, tops[0], transB=1)
        # general axis: keep the leading axes, flatten the rest, multiply
        flat = self.g.reshape(xs[0], [0] * axis + [-1], lp.name + "_flat")
        y = self.g.op("MatMul", [flat, self.g.const(lp.name + "_Wt", np.ascontiguousarray(weight.T))],
                      lp.name + "_mm")
        if p.bias_term:
            y = self.g.op("Add", [y, self.g.const(lp.name + "_B", w[1])], lp.name + "_add")
        if axis == 0:
            y = self.g.reshape(y, [p.num_output], lp.name + "_out")
        return self.finish(y, tops[0])

    def layer_Pooling(self, lp, layer, xs, bottoms, tops):
        P = caffe_pb2.PoolingParameter
        p = lp.pooling_param
        x, shape = xs[0], self.shape(bottoms[0])
        if len(shape) != 4:
            raise self.error(lp, "pooling needs a 4-axis input, got %s" % (shape,))
        method = p.pool
        if method == P.STOCHASTIC:
            raise self.error(lp, "STOCHASTIC pooling has no exact ONNX form (its TEST forward weights each "
                             "window by its values); use MAX or AVE")
        if p.global_pooling:
            op = "GlobalMaxPool" if method == P.MAX else "GlobalAveragePool"
            return self.emit(op, [x], tops[0])
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
        oh, ow = self.shape(tops[0])[2:]
        H, W = shape[2:]
        # end pads giving Caffe's output size with floor rounding
        eh, ew = (oh - 1) * sh + kh - H - ph, (ow - 1) * sw + kw - W - pw
        if eh >= kh or ew >= kw:
            raise self.error(lp, "its last window lies wholly outside the %dx%d input (kernel %dx%d, stride "
                             "%dx%d, pad 0, ceil rounding), where Caffe gives -FLT_MAX (MAX) or 0/0 (AVE); "
                             "use round_mode: FLOOR or another stride" % (H, W, kh, kw, sh, sw))
        if method == P.MAX:
            if eh < 0 or ew < 0:
                x = self.g.slice(x, [0, 0], [H + min(eh, 0), W + min(ew, 0)], [2, 3], lp.name + "_trim")
            return self.emit("MaxPool", [x], tops[0], kernel_shape=[kh, kw], strides=[sh, sw],
                             pads=[ph, pw, max(eh, 0), max(ew, 0)])
        # AVE: Caffe's divisor is the window clipped to the input padded by (ph, pw): zero-pad by
        # that much (less at the end where no window reaches; negative: rows no window reads)
        if ph or pw or eh < 0 or ew < 0:
            pads = [0, 0, ph, pw, 0, 0, min(eh, ph), min(ew, pw)]
            x = self.g.op("Pad", [x, self.g.ints(lp.name + "_pads", pads)], lp.name + "_pad")
        eh, ew = eh - ph, ew - pw        # beyond Caffe's padding: not counted
        return self.emit("AveragePool", [x], tops[0], kernel_shape=[kh, kw], strides=[sh, sw],
                         pads=[0, 0, max(eh, 0), max(ew, 0)], count_include_pad=0)

    def layer_LRN(self, lp, layer, xs, bottoms, tops):
        p = lp.lrn_param
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            return self.emit("LRN", xs, tops[0], size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
        g, n, r = self.g, p.local_size, (p.local_size - 1) // 2
        sq = g.op("Mul", [xs[0], xs[0]], lp.name + "_sq")
        avg = g.op("AveragePool", [sq], lp.name + "_avg", kernel_shape=[n, n], strides=[1, 1],
                   pads=[r, r, r, r], count_include_pad=1)
        scale = g.op("Add", [g.op("Mul", [avg, g.const(lp.name + "_alpha", p.alpha)], lp.name + "_as"),
                             g.const(lp.name + "_one", 1.0)], lp.name + "_scale")
        pw = g.op("Pow", [scale, g.const(lp.name + "_beta", -p.beta)], lp.name + "_pow")
        return self.emit("Mul", [xs[0], pw], tops[0])

    def layer_Crop(self, lp, layer, xs, bottoms, tops):
        p = lp.crop_param
        s0, s1 = self.shape(bottoms[0]), self.shape(bottoms[1])
        axis = p.axis % len(s0)
        if axis == 0 and self.dynamic:
            raise self.error(lp, "crops the batch axis (crop_param.axis 0): export without --dynamic-batch")
        axes = list(range(axis, len(s0)))
        offs = list(p.offset)
        offs = [0] * len(axes) if not offs else (offs * len(axes) if len(offs) == 1 else offs)
        ends = [o + s1[a] for o, a in zip(offs, axes)]
        y = self.g.slice(xs[0], offs, ends, axes, lp.name + "_slice")
        return self.finish(y, tops[0])

    # -- neurons ------------------------------------------------------------------
    def layer_ReLU(self, lp, layer, xs, bottoms, tops):
        slope = lp.relu_param.negative_slope
        if slope:
            return self.emit("LeakyRelu", xs, tops[0], alpha=slope)
        return self.emit("Relu", xs, tops[0])

    def layer_PReLU(self, lp, layer, xs, bottoms, tops):
        a = self.params(layer)[0]
        shape = self.shape(bottoms[0])
        if a.size > 1 or not lp.prelu_param.channel_shared:
            a = a.reshape((-1,) + (1,) * max(len(shape) - 2, 0))
        return self.emit("PRelu", [xs[0], self.g.const(lp.name + "_slope", a)], tops[0])

    def layer_ELU(self, lp, layer, xs, bottoms, tops):
        return self.emit("Elu", xs, tops[0], alpha=lp.elu_param.alpha)

    def layer_Sigmoid(self, lp, layer, xs, bottoms, tops):
        return self.emit("Sigmoid", xs, tops[0])

    def layer_TanH(self, lp, layer, xs, bottoms, tops):
        return self.emit("Tanh", xs, tops[0])

    def layer_AbsVal(self, lp, layer, xs, bottoms, tops):
        return self.emit("Abs", xs, tops[0])

    def layer_BNLL(self, lp, layer, xs, bottoms, tops):
        return self.emit("Softplus", xs, tops[0])

    def _affine(self, x, scale, shift, hint):
        if scale != 1:
            x = self.g.op("Mul", [x, self.g.const(hint + "_scale", scale)], hint + "_mul")
        if shift != 0:
            x = self.g.op("Add", [x, self.g.const(hint + "_shift", shift)], hint + "_add")
        return x

    def layer_Power(self, lp, layer, xs, bottoms, tops):
        p = lp.power_param
        if p.power == 0:
            return self.emit("ConstantOfShape", [self.g.op("Shape", xs, lp.name + "_shape")], tops[0],
                             value=self.g.helper.make_tensor("one", 1, [1], [1.0]))
        y = self._affine(xs[0], p.scale, p.shift, lp.name)
        if p.power != 1:
            y = self.g.op("Pow", [y, self.g.const(lp.name + "_power", p.power)], lp.name + "_pow")
        return self.finish(y, tops[0])

    def layer_Exp(self, lp, layer, xs, bottoms, tops):
        p = lp.exp_param
        if p.base != -1 and p.base <= 0:
            raise self.error(lp, "exp_param.base must be -1 (e) or positive, got %g" % p.base)
        log_base = 1.0 if p.base == -1 else float(np.log(p.base))
        inner = log_base * p.scale
        outer = float(np.exp(p.shift)) if p.base == -1 else float(p.base) ** p.shift
        y = self._affine(xs[0], inner, 0, lp.name + "_in")
        y = self.g.op("Exp", [y], lp.name + "_exp")
        return self.finish(self._affine(y, outer, 0, lp.name + "_out"), tops[0])

    def layer_Log(self, lp, layer, xs, bottoms, tops):
        p = lp.log_param
        if p.base != -1 and p.base <= 0:
            raise self.error(lp, "log_param.base must be -1 (e) or positive, got %g" % p.base)
        y = self._affine(xs[0], p.scale, p.shift, lp.name + "_in")
        y = self.g.op("Log", [y], lp.name + "_log")
        base_scale = 1.0 if p.base == -1 else 1.0 / float(np.log(p.base))
        return self.finish(self._affine(y, base_scale, 0, lp.name + "_out"), tops[0])

    def layer_Clip(self, lp, layer, xs, bottoms, tops):
        p = lp.clip_param
        return self.emit("Clip", [xs[0], self.g.const(lp.name + "_min", p.min), self.g.const(lp.name + "_max", p.max)],
                         tops[0])

    def layer_Swish(self, lp, layer, xs, bottoms, tops):
        beta = lp.swish_param.beta
        s = self.g.op("Sigmoid", [self._affine(xs[0], beta, 0, lp.name + "_beta")], lp.name + "_sig")
        return self.emit("Mul", [xs[0], s], tops[0])

    def layer_Threshold(self, lp, layer, xs, bottoms, tops):
        gt = self.g.op("Greater", [xs[0], self.g.const(lp.name + "_t", lp.threshold_param.threshold)],
                       lp.name + "_gt")
        return self.emit("Cast", [gt], tops[0], to=1)

    def layer_Dropout(self, lp, layer, xs, bottoms, tops):
        return self.emit("Identity", xs, tops[0])   # TEST phase: the identity

    # -- normalisation and affine -----------------------------------------------------
    def layer_BatchNorm(self, lp, layer, xs, bottoms, tops):
        eps = lp.batch_norm_param.eps
        shape = self.shape(bottoms[0])
        if not layer.use_global_stats:
            return self._batch_stats_norm(lp, xs[0], shape, eps, tops[0])
        mean, var, factor = self.params(layer)
        s = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        mean, var = (mean * np.float32(s)).astype(np.float32), (var * np.float32(s)).astype(np.float32)
        C = mean.size
        x = xs[0]
        if len(shape) < 2:
            raise self.error(lp, "input of shape %s: BatchNormalization needs (N, C, ...)" % (shape,))
        return self.emit("BatchNormalization", [x, self.g.const(lp.name + "_gamma", np.ones(C)),
                                                self.g.const(lp.name + "_beta", np.zeros(C)),
                                                self.g.const(lp.name + "_mean", mean),
                                                self.g.const(lp.name + "_var", var)], tops[0], epsilon=eps)

    def _batch_stats_norm(self, lp, x, shape, eps, top):
        g, h = self.g, lp.name
        axes = [0] + list(range(2, len(shape)))
        mean = g.reduce("ReduceMean", x, axes, h + "_mean", keepdims=1)
        cen = g.op("Sub", [x, mean], h + "_centred")
        var = g.reduce("ReduceMean", g.op("Mul", [cen, cen], h + "_sq"), axes, h + "_var", keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(h + "_eps", eps)], h + "_veps")], h + "_std")
        return self.emit("Div", [cen, std], top)

    def _broadcast_shape(self, shape, axis, n_axes):
        """Shape of a parameter over axes [axis, axis + n_axes) of ``shape``, padded with 1s to the right."""
        return tuple(shape[axis:axis + n_axes]) + (1,) * (len(shape) - axis - n_axes)

    def _scale_or_bias(self, lp, layer, xs, bottoms, tops, p, op_type, has_extra_bias):
        shape = self.shape(bottoms[0])
        axis = p.axis % len(shape) if shape else 0
        params = self.params(layer)
        if len(bottoms) > 1:
            other_shape = self.shape(bottoms[1])
            target = tuple(other_shape) + (1,) * (len(shape) - axis - len(other_shape))
            dims = list(target)
            if self.dynamic and axis == 0 and dims:
                dims[0] = 0
            other = self.g.reshape(xs[1], dims, lp.name + "_b1") if target != tuple(other_shape) else xs[1]
            extra = params
        else:
            n_axes = params[0].ndim
            target = self._broadcast_shape(shape, axis, n_axes)
            other = self.g.const(lp.name + ("_gamma" if op_type == "Mul" else "_beta"), params[0].reshape(target))
            extra = params[1:]
        y = self.g.op(op_type, [xs[0], other], lp.name + "_" + op_type.lower())
        if has_extra_bias and extra:
            y = self.g.op("Add", [y, self.g.const(lp.name + "_beta", extra[-1].reshape(target))], lp.name + "_add")
        return self.finish(y, tops[0])

    def layer_Scale(self, lp, layer, xs, bottoms, tops):
        return self._scale_or_bias(lp, layer, xs, bottoms, tops, lp.scale_param, "Mul",
                                   lp.scale_param.bias_term)

    def layer_Bias(self, lp, layer, xs, bottoms, tops):
        return self._scale_or_bias(lp, layer, xs, bottoms, tops, lp.bias_param, "Add", False)

    def layer_MVN(self, lp, layer, xs, bottoms, tops):
        p = lp.mvn_param
        g, h, shape = self.g, lp.name, self.shape(bottoms[0])
        axes = list(range(1 if p.across_channels else 2, len(shape)))
        y = g.op("Sub", [xs[0], g.reduce("ReduceMean", xs[0], axes, h + "_mean", keepdims=1)], h + "_centred")
        if p.normalize_variance:
            var = g.reduce("ReduceMean", g.op("Mul", [y, y], h + "_sq"), axes, h + "_var", keepdims=1)
            std = g.op("Add", [g.op("Sqrt", [var], h + "_std"), g.const(h + "_eps", p.eps)], h + "_stdeps")
            y = g.op("Div", [y, std], h + "_norm")
        return self.finish(y, tops[0])

    # -- common -----------------------------------------------------------------------
    def layer_Eltwise(self, lp, layer, xs, bottoms, tops):
        E = caffe_pb2.EltwiseParameter
        p = lp.eltwise_param
        if p.operation == E.PROD:
            y = xs[0]
            for j, x in enumerate(xs[1:]):
                y = self.g.op("Mul", [y, x], lp.name + "_prod%d" % j)
            return self.finish(y, tops[0])
        if p.operation == E.MAX:
            return self.emit("Max", xs, tops[0])
        coeffs = list(p.coeff) or [1.0] * len(xs)
        if len(coeffs) != len(xs):
            raise self.error(lp, "eltwise_param has %d coeffs for %d bottoms" % (len(coeffs), len(xs)))
        terms = [x if c == 1 else self.g.op("Mul", [x, self.g.const(lp.name + "_coeff", c)], lp.name + "_term")
                 for x, c in zip(xs, coeffs)]
        y = terms[0]
        for j, t in enumerate(terms[1:]):
            y = self.g.op("Add", [y, t], lp.name + "_sum%d" % j)
        return self.finish(y, tops[0])

    def layer_Concat(self, lp, layer, xs, bottoms, tops):
        p = lp.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        return self.emit("Concat", xs, tops[0], axis=axis % len(self.shape(bottoms[0])))

    def layer_Slice(self, lp, layer, xs, bottoms, tops):
        p = lp.slice_param
        shape = self.shape(bottoms[0])
        axis = (p.slice_dim if p.HasField("slice_dim") else p.axis) % len(shape)
        sizes = [self.shape(t)[axis] for t in tops]
        if len(tops) == 1:
            return self.emit("Identity", xs, tops[0])
        return self.g.split(xs[0], axis, sizes, lp.name, out_names=[self.out_name(t) for t in tops])

    def layer_Split(self, lp, layer, xs, bottoms, tops):
        return [xs[0]] * len(tops)      # every top is the bottom's value

    def layer_Silence(self, lp, layer, xs, bottoms, tops):
        return None

    def layer_Flatten(self, lp, layer, xs, bottoms, tops):
        shape = self.shape(bottoms[0])
        p = lp.flatten_param
        axis, end = p.axis % len(shape), p.end_axis % len(shape)
        if axis == 1 and end == len(shape) - 1:
            return self.emit("Flatten", xs, tops[0], axis=1)
        target = [0] * axis + [-1] + list(shape[end + 1:])
        return self.finish(self.g.reshape(xs[0], target, lp.name), tops[0])

    def layer_Reshape(self, lp, layer, xs, bottoms, tops):
        shape, out = self.shape(bottoms[0]), self.shape(tops[0])
        if not self.dynamic:
            return self.finish(self.g.reshape(xs[0], list(out), lp.name), tops[0])
        p = lp.reshape_param
        axis = p.axis if p.axis >= 0 else len(shape) + 1 + p.axis
        n_axes = len(shape) - axis if p.num_axes == -1 else p.num_axes
        dims = list(p.shape.dim)
        target = [0] * axis + dims + list(shape[axis + n_axes:])   # trailing dims static
        if axis == 0 and 0 not in dims[:1]:
            if -1 not in target:
                raise self.error(lp, "reshapes the batch axis away; export without --dynamic-batch")
        return self.finish(self.g.reshape(xs[0], target, lp.name), tops[0])

    def layer_Softmax(self, lp, layer, xs, bottoms, tops):
        return self.emit("Softmax", xs, tops[0], axis=lp.softmax_param.axis % len(self.shape(bottoms[0])))

    def layer_Reduction(self, lp, layer, xs, bottoms, tops):
        R = caffe_pb2.ReductionParameter
        p = lp.reduction_param
        shape = self.shape(bottoms[0])
        axis = p.axis % len(shape)
        op = {R.SUM: "ReduceSum", R.ASUM: "ReduceL1", R.SUMSQ: "ReduceSumSquare", R.MEAN: "ReduceMean"}[p.operation]
        y = self.g.reduce(op, xs[0], list(range(axis, len(shape))), lp.name + "_reduce")
        return self.finish(self._affine(y, p.coeff, 0, lp.name), tops[0])

    def layer_ArgMax(self, lp, layer, xs, bottoms, tops):
        p = lp.argmax_param
        g, h = self.g, lp.name
        shape = self.shape(bottoms[0])
        x = xs[0]
        if p.HasField("axis"):
            axis = p.axis % len(shape)
        else:
            x = g.op("Flatten", [x], h + "_flat", axis=1)
            axis = 1
        d = shape[axis] if p.HasField("axis") else int(np.prod(shape[1:]))
        if p.top_k == 1 and not p.out_max_val:
            # ONNX's ArgMax with select_last_index ranks ties as Caffe does
            idx = g.op("ArgMax", [x], h + "_argmax", axis=axis, keepdims=1, select_last_index=1)
            y = g.op("Cast", [idx], h + "_fidx", to=1)
            if not p.HasField("axis"):
                y = g.reshape(y, self.batch_dims(self.shape(tops[0])), h + "_out")
            return self.finish(y, tops[0])
        # Caffe ranks equal values by the larger index first: reverse the axis around TopK
        rev = g.slice(x, [-1], [-(2 ** 62)], [axis], h + "_rev", steps=[-1])
        vals, idx = g.op("TopK", [rev, g.ints(h + "_k", [p.top_k])], h + "_topk", outputs=2, axis=axis)
        idx = g.op("Sub", [g.const(h + "_last", d - 1), g.op("Cast", [idx], h + "_fidx", to=1)], h + "_idx")
        if p.HasField("axis"):
            return self.finish(vals if p.out_max_val else idx, tops[0])
        y = idx
        if p.out_max_val:
            y = g.op("Concat", [g.unsqueeze(idx, [1], h + "_i3"), g.unsqueeze(vals, [1], h + "_v3")],
                     h + "_both", axis=1)
        return self.finish(g.reshape(y, self.batch_dims(self.shape(tops[0])), h + "_out"), tops[0])

    def layer_Tile(self, lp, layer, xs, bottoms, tops):
        shape = self.shape(bottoms[0])
        reps = [1] * len(shape)
        reps[lp.tile_param.axis % len(shape)] = lp.tile_param.tiles
        return self.emit("Tile", [xs[0], self.g.ints(lp.name + "_reps", reps)], tops[0])

    def layer_Embed(self, lp, layer, xs, bottoms, tops):
        w = self.params(layer)
        idx = self.g.op("Cast", xs, lp.name + "_idx", to=7)
        y = self.g.op("Gather", [self.g.const(lp.name + "_W", w[0]), idx], lp.name + "_gather", axis=0)
        if lp.embed_param.bias_term:
            y = self.g.op("Add", [y, self.g.const(lp.name + "_B", w[1])], lp.name + "_add")
        return self.finish(y, tops[0])

    def layer_Parameter(self, lp, layer, xs, bottoms, tops):
        return self.emit("Identity", [self.g.const(lp.name + "_value", self.params(layer)[0])], tops[0])

    # -- recurrent ----------------------------------------------------------------------
    def _recurrent_inputs(self, lp, layer, xs, bottoms):
        if self.dynamic:
            raise self.error(lp, "a recurrent layer is unrolled over its T time steps (axis 0 of its "
                             "input), which must stay fixed: export without --dynamic-batch")
        T, N = self.shape(bottoms[0])[:2]
        D = int(np.prod(self.shape(bottoms[0])[2:]))
        g, h = self.g, lp.name
        x = g.reshape(xs[0], [T * N, D], h + "_x2")
        cont = g.reshape(xs[1], [T, N, 1], h + "_cont3")
        static = xs[2] if layer.static_input else None
        if static is not None:
            static = g.reshape(static, [N, layer.S], h + "_static2")
        n_states = len(layer.state_names)
        states = None
        if layer.expose_hidden:
            first = 2 + int(layer.static_input)
            states = [g.reshape(s, [N, layer.H], h + "_%s0" % nm)
                      for s, nm in zip(xs[first:first + n_states], layer.state_names)]
        return T, N, x, cont, static, states

    def _input_transform(self, lp, T, N, x, static, w, b, w_static):
        g, h = self.g, lp.name
        pre = g.op("Gemm", [x, g.const(h + "_Wx", w), g.const(h + "_bx", b)], h + "_pre", transB=1)
        pre = g.reshape(pre, [T, N, w.shape[0]], h + "_pre3")
        if static is not None:
            st = g.op("Gemm", [static, g.const(h + "_Ws", w_static)], h + "_prestatic", transB=1)
            pre = g.op("Add", [pre, st], h + "_preall")
        steps = g.split(pre, 0, [1] * T, h + "_steps") if T > 1 else [pre]
        return [g.reshape(s, [N, w.shape[0]], h + "_step") for s in steps]

    def _conts(self, lp, T, N, cont):
        steps = self.g.split(cont, 0, [1] * T, lp.name + "_conts") if T > 1 else [cont]
        return [self.g.reshape(c, [N, 1], lp.name + "_cont") for c in steps]

    def _zeros(self, hint, N, H):
        return self.g.const(hint, np.zeros((N, H)))

    def layer_RNN(self, lp, layer, xs, bottoms, tops):
        g, h = self.g, lp.name
        T, N, x, cont, static, states = self._recurrent_inputs(lp, layer, xs, bottoms)
        params = self.params(layer)
        w_xh, b_h = params[0], params[1]
        w_s = params[2] if layer.static_input else None
        w_hh, w_ho, b_o = params[-3:]
        pres = self._input_transform(lp, T, N, x, static, w_xh, b_h, w_s)
        conts = self._conts(lp, T, N, cont)
        hprev = states[0] if states else self._zeros(h + "_h0", N, layer.H)
        whh = g.const(h + "_Whh_t", np.ascontiguousarray(w_hh.T))
        hs = []
        for t in range(T):
            hc = g.op("Mul", [conts[t], hprev], h + "_hc%d" % t)
            hprev = g.op("Tanh", [g.op("Add", [pres[t], g.op("MatMul", [hc, whh], h + "_rec%d" % t)],
                                       h + "_a%d" % t)], h + "_h%d" % t)
            hs.append(hprev)
        hall = g.op("Concat", hs, h + "_hall", axis=0) if T > 1 else hs[0]
        o = g.op("Tanh", [g.op("Gemm", [hall, g.const(h + "_Who", w_ho), g.const(h + "_bo", b_o)],
                               h + "_ogemm", transB=1)], h + "_o")
        out = [self.finish(g.reshape(o, [T, N, layer.H], h + "_o3"), tops[0])]
        if layer.expose_hidden:
            out.append(self.finish(g.reshape(hprev, [1, N, layer.H], h + "_hT"), tops[1]))
        return out

    def layer_LSTM(self, lp, layer, xs, bottoms, tops):
        g, h, H = self.g, lp.name, layer.H
        T, N, x, cont, static, states = self._recurrent_inputs(lp, layer, xs, bottoms)
        params = self.params(layer)
        w_s = params[2] if layer.static_input else None
        pres = self._input_transform(lp, T, N, x, static, params[0], params[1], w_s)
        conts = self._conts(lp, T, N, cont)
        hprev, cprev = states if states else (self._zeros(h + "_h0", N, H), self._zeros(h + "_c0", N, H))
        whc = g.const(h + "_Whc_t", np.ascontiguousarray(params[-1].T))
        hs = []
        for t in range(T):
            s = "%s_%d" % (h, t)
            hc = g.op("Mul", [conts[t], hprev], s + "_hc")
            gates = g.op("Add", [pres[t], g.op("MatMul", [hc, whc], s + "_rec")], s + "_gates")
            i, f, o, gg = g.split(gates, 1, [H] * 4, s + "_ifog")     # Caffe's gate order
            i, f, o = (g.op("Sigmoid", [v], s + "_" + n) for v, n in ((i, "i"), (f, "f"), (o, "o")))
            gg = g.op("Tanh", [gg], s + "_g")
            fc = g.op("Mul", [g.op("Mul", [f, conts[t]], s + "_fcont"), cprev], s + "_fc")
            cprev = g.op("Add", [fc, g.op("Mul", [i, gg], s + "_ig")], s + "_c")
            hprev = g.op("Mul", [o, g.op("Tanh", [cprev], s + "_tc")], s + "_h")
            hs.append(hprev)
        hall = g.op("Concat", [g.unsqueeze(v, [0], h + "_h3") for v in hs], h + "_hall", axis=0)
        out = [self.finish(hall, tops[0])]
        if layer.expose_hidden:
            out.append(self.finish(g.reshape(hprev, [1, N, H], h + "_hT"), tops[1]))
            out.append(self.finish(g.reshape(cprev, [1, N, H], h + "_cT"), tops[2]))
        return out


# -- public functions ----------------------------------------------------------------

def net_to_onnx(net, opset=DEFAULT_OPSET, dynamic_batch=False, extra_outputs=()):
    """An onnx.ModelProto computing ``net``'s forward (a built solvers.net.Net, TEST phase, Input layers).

    ``extra_outputs``: blob names to expose as graph outputs beside the net's own outputs
    (their final values, as ``net.blobs[name].data`` holds after forward).
    """
    require_onnx()
    import onnx
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise OnnxExportError("opset %d not supported: use %d to %d" % (opset, MIN_OPSET,
                                                                      onnx.defs.onnx_opset_version()))
    for i, lp in enumerate(net.net_param.layer):
        if lp.type in DATA_TYPES or _is_loss(lp) or lp.type in DROPPED_TYPES:
            raise OnnxExportError("layer %r (type %s): export the deploy form (solvers.onnx_export."
                                  "deploy_net, or tools/export_onnx.py which derives it)" % (lp.name, lp.type))
    unknown = [b for b in extra_outputs if b not in net.blobs]
    if unknown:
        raise OnnxExportError("extra outputs %s: the net has no such blob" % ", ".join(map(repr, unknown)))
    model = _Exporter(net, opset, dynamic_batch, extra_outputs).run()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError("the exported model fails onnx.checker (a bug in the exporter): %s" % e) from None
    return model


def forward_both(net, model, values):
    """(ours, theirs): {output: array} from ``net``'s forward and ONNX Runtime's on ``values``.

    ``values``: {input blob: float32 array}; the net is reshaped to them (e.g. another batch size).
    """
    try:
        import onnxruntime
    except ImportError:
        raise OnnxExportError("checking with ONNX Runtime needs the onnxruntime package: "
                              "pip install 'caffe-toolkit[onnx]'") from None
    for name, v in values.items():
        net.blobs[name].reshape(v.shape)
    net.reshape()
    for name, v in values.items():
        net.blobs[name].data[...] = v
    net.forward()
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ours = {o: np.array(net.blobs[o].data) for o in names}
    return ours, dict(zip(names, sess.run(names, values)))


def rel_err(ours, theirs):
    """max |ours - theirs| / max |ours| (inf when the shapes differ)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    if not ours.size:
        return 0.0
    return float(np.abs(ours - theirs).max() / (np.abs(ours).max() + 1e-12))


def save_model(model, path):
    """Write the model atomically (a temporary name, then rename)."""
    if model.ByteSize() >= 2 ** 31:
        raise OnnxExportError("%s: the model holds %.1f GB, over protobuf's 2 GB limit for one ONNX file"
                              % (path, model.ByteSize() / 1e9))
    atomic_write_bytes(os.fspath(path), model.SerializeToString())


def export(prototxt, weights, out_path, opset=DEFAULT_OPSET, dynamic_batch=False, input_shapes=None):
    """prototxt (+ caffemodel) -> ONNX file. Returns the notes on what the deploy form changed."""
    require_onnx()
    net, notes = deploy_net(read_net(prototxt), weights, input_shapes)
    model = net_to_onnx(net, opset, dynamic_batch)
    save_model(model, out_path)
    return notes


def to_onnx(net, path, opset=DEFAULT_OPSET, dynamic_batch=False):
    """Write a built Net (any phase, train nets too) as ONNX: pycaffe face's ``Net.to_onnx``.

    A net with data layers or losses is first turned into its deploy form, its data tops
    keeping the shapes they have in ``net``; returns the notes on what that changed.
    """
    require_onnx()
    notes = []
    if any(lp.type in DATA_TYPES or _is_loss(lp) or lp.type in DROPPED_TYPES or lp.phase != caffe_pb2.TEST
           or (lp.type == "Python" and not lp.bottom) for lp in net.net_param.layer):
        shapes = {t: tuple(net.blobs[t].shape) for lp in net.net_param.layer
                  if lp.type in DATA_TYPES or (lp.type == "Python" and not lp.bottom) for t in lp.top}
        built = caffe_pb2.NetParameter()
        built.CopyFrom(net.net_param)
        for lp in built.layer:     # the layers this net chose: no rule may drop them again
            del lp.include[:], lp.exclude[:]
        param, notes = deploy_param(built, shapes)
        from solvers.net import Net
        deployed = Net(param, phase="TEST")
        deployed.copy_from(net.to_proto())
        net = deployed
    save_model(net_to_onnx(net, opset, dynamic_batch), path)
    for note in notes:
        log.info("to_onnx: %s", note)
    return notes
