"""Import an ONNX model as a Caffe net (prototxt) and weights (caffemodel).

For the ONNX operators that map exactly onto Caffe layers: everything
``solvers.onnx_export`` writes for the common layers, and models from other
tools that use only those operators, so that a net trained elsewhere can be
fine-tuned here. The graph is walked node by node (ONNX keeps nodes in
topological order); each node becomes a layer, with a few patterns folded
the way the exporter writes them (Flatten + Gemm, MatMul + Add, a zero Pad
before an AveragePool, Greater + Cast, BatchNormalization as BatchNorm plus
Scale). An operator or attribute with no exact Caffe form is an error naming
the node, never an approximation.

Input sizes left symbolic (a dynamic batch) become 1 unless given.
"""
import numpy as np

from netspec import caffe_pb2
from netspec.errors import CaffeError
from netspec.io import array_to_blobproto, write_binary, write_text
from solvers.onnx_export import unique_name


class OnnxImportError(CaffeError):
    """An ONNX model (or one of its nodes) has no exact Caffe form."""


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise OnnxImportError("ONNX import needs the onnx package: pip install 'caffe-toolkit[onnx]'") from None


class _Importer:
    def __init__(self, model, input_shapes):
        import onnx
        from onnx import numpy_helper, shape_inference
        self.np_helper = numpy_helper
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in self.consts]
        # fix symbolic input sizes, then let ONNX infer every tensor's shape
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
        self.input_shapes = {}
        for vi in fixed.graph.input:
            if vi.name in self.consts:
                continue
            dims = list(input_shapes.get(vi.name, ()))
            if not dims:
                dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
            for d, v in zip(vi.type.tensor_type.shape.dim, dims):
                d.Clear()
                d.dim_value = int(v)
            self.input_shapes[vi.name] = tuple(int(v) for v in dims)
        try:
            inferred = shape_inference.infer_shapes(fixed, strict_mode=True)
        except Exception as e:   # onnx raises its own InferenceError and others
            raise OnnxImportError("the ONNX model fails shape inference: %s" % e) from None
        self.shapes = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                self.shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
        self.graph = model.graph
        self.inputs = [i.name for i in graph_inputs]
        self.outputs = [o.name for o in model.graph.output]
        self.consumers = {}
        for node in model.graph.node:
            for x in node.input:
                self.consumers.setdefault(x, []).append(node)
        self.blob = {}          # ONNX tensor -> Caffe blob name
        self.pending = {}       # tensor -> (kind, data): values folded into a later layer
        self.net = caffe_pb2.NetParameter(name=model.graph.name or "imported")
        self.weights = caffe_pb2.NetParameter(name=self.net.name)
        self.names = set()
        self.batch_of = {}      # constant computed from a tensor's shape -> that tensor
        self.skip = set()       # outputs of nodes already taken into a pattern's layer

    # -- helpers -------------------------------------------------------------------
    def error(self, node, msg):
        return OnnxImportError("ONNX node %r (%s): %s" % (node.name or node.output[0], node.op_type, msg))

    def attrs(self, node):
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name):
        return self.consts.get(name) if name else None

    def shape(self, tensor):
        return self.shapes.get(tensor)

    def layer_name(self, node):
        return self.unique(node.name or node.output[0])

    def unique(self, base):
        return unique_name(base, self.names)

    def add(self, node, type_, bottoms, tops=None, blobs=(), **params):
        """A Caffe layer for ``node``; tops default to the node's outputs (blob names = tensor names)."""
        lp = self.net.layer.add(name=self.layer_name(node), type=type_)
        lp.bottom.extend(self.blob[b] if b in self.blob else b for b in bottoms)
        tops = list(node.output[:1]) if tops is None else tops
        lp.top.extend(tops)
        for t in tops:
            self.blob[t] = t
        for field, values in params.items():
            getattr(lp, field).MergeFrom(values)
        if blobs:
            w = self.weights.layer.add(name=lp.name, type=type_)
            for a in blobs:
                w.blobs.add().CopyFrom(array_to_blobproto(np.asarray(a, np.float32)))
        return lp

    def alias(self, tensor, source):
        self.blob[tensor] = self.blob.get(source, source)

    def data_input(self, node, i=0):
        x = node.input[i]
        if x in self.consts:
            raise self.error(node, "input %d is a constant where Caffe needs a blob" % i)
        if x in self.pending:
            raise self.error(node, "reads %r, a value folded for another use (%s)" % (x, self.pending[x][0]))
        return x

    def scalar(self, node, name):
        v = self.const(name)
        if v is None or v.size != 1:
            raise self.error(node, "needs %r to be a constant scalar" % name)
        return float(v.reshape(-1)[0])

    # -- the walk --------------------------------------------------------------------
    def run(self):
        for name in self.inputs:
            lp = self.net.layer.add(name=name, type="Input")
            lp.top.append(name)
            lp.input_param.shape.add().dim.extend(self.input_shapes[name])
            self.names.add(name)
            self.blob[name] = name
        for node in self.graph.node:
            if node.name in self.skip or node.output[0] in self.skip:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self.error(node, "operator domain %r is not ONNX's own" % node.domain)
            if self.fold(node):
                continue
            method = getattr(self, "op_" + node.op_type, None)
            if method is None:
                raise self.error(node, "no Caffe layer computes this operator")
            try:
                method(node, self.attrs(node))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                raise self.error(node, "malformed or unsupported form (%s: %s)" % (type(e).__name__, e)) from None
        for o in self.outputs:
            if o in self.consts and o not in self.blob:     # a constant output: Caffe's Parameter layer
                p = caffe_pb2.ParameterParameter()
                p.shape.dim.extend(self.consts[o].shape)
                lp = self.net.layer.add(name=self.unique(o), type="Parameter")
                lp.top.append(o)
                lp.parameter_param.CopyFrom(p)
                w = self.weights.layer.add(name=lp.name, type="Parameter")
                w.blobs.add().CopyFrom(array_to_blobproto(np.asarray(self.consts[o], np.float32)))
                continue
            if o in self.pending:
                raise OnnxImportError("graph output %r is %s, not a value Caffe layers compute" % (o, self.pending[o][0]))
            if self.blob.get(o, o) != o:     # an alias (Identity, Cast) is an output: give it its name
                lp = self.net.layer.add(name=self.unique(o), type="Split")
                lp.bottom.append(self.blob[o])
                lp.top.append(o)
        return self.net, self.weights

    def fold(self, node):
        """Evaluate a node whose inputs are all constants (Constant nodes, shape arithmetic such as
        Shape -> Gather -> Unsqueeze -> Concat before a Reshape) into constants; True if done."""
        if node.op_type == "Shape":
            shape = self.shape(node.input[0])
            if shape is None:
                return False
            a = self.attrs(node)
            self.consts[node.output[0]] = np.asarray(shape, np.int64)[a.get("start", 0):a.get("end")]
            self.batch_of[node.output[0]] = node.input[0]
            return True
        if node.op_type == "ConstantOfShape" and node.input[0] in self.batch_of:
            src = self.batch_of[node.input[0]]
            value = self.attrs(node).get("value")
            one = value is None or self.np_helper.to_array(value).reshape(-1)[0] == 1
            if one and tuple(self.consts[node.input[0]]) == self.shape(src):   # ones like a blob: Power 0
                self.add(node, "Power", [src], power_param=caffe_pb2.PowerParameter(power=0.0))
                return True
        ins = [x for x in node.input if x]
        if node.op_type != "Constant" and (not ins or any(x not in self.consts for x in ins)):
            return False
        from onnx.reference import ReferenceEvaluator
        try:
            values = ReferenceEvaluator(node).run(None, {x: self.consts[x] for x in ins})
        except Exception as e:
            raise self.error(node, "cannot evaluate this node of constants (%s)" % e) from None
        for name, v in zip(node.output, values):
            self.consts[name] = np.asarray(v)
            if node.op_type in ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast") and \
                    any(x in self.batch_of for x in ins):
                self.batch_of[name] = next(self.batch_of[x] for x in ins if x in self.batch_of)
        return True

    # -- operators -------------------------------------------------------------------
    def _spatial(self, node, a, n):
        pads = list(a.get("pads", [0] * 2 * n))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise self.error(node, "auto_pad %s: give explicit pads" % a["auto_pad"])
        return pads[:n], pads[n:]

    def op_Conv(self, node, a, type_="Convolution"):
        x = self.data_input(node)
        w = self.const(node.input[1])
        b = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None:
            raise self.error(node, "the weights must be a constant (an initializer)")
        n = w.ndim - 2
        begin, end = self._spatial(node, a, n)
        if begin != end:
            raise self.error(node, "asymmetric pads %s: Caffe pads both sides alike" % a.get("pads"))
        if a.get("output_padding") and any(a["output_padding"]) or a.get("output_shape"):
            raise self.error(node, "output_padding/output_shape have no Caffe form")
        p = caffe_pb2.ConvolutionParameter(num_output=w.shape[0] if type_ == "Convolution" else
                                           w.shape[1] * a.get("group", 1),
                                           bias_term=b is not None, group=a.get("group", 1))
        p.kernel_size.extend(w.shape[2:])
        p.stride.extend(a.get("strides", [1] * n))
        p.pad.extend(begin)
        p.dilation.extend(a.get("dilations", [1] * n))
        self.add(node, type_, [x], blobs=[w] + ([b] if b is not None else []), convolution_param=p)

    def op_ConvTranspose(self, node, a):
        self.op_Conv(node, a, "Deconvolution")

    def op_Gemm(self, node, a):
        x = self.data_input(node)
        w, c = self.const(node.input[1]), self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if w is None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (c is not None and a.get("beta", 1.0) != 1.0):
            raise self.error(node, "only Gemm(X, constant W, constant bias) with alpha = beta = 1 and no transA maps "
                             "to InnerProduct")
        trans_b = a.get("transB", 0)
        n_out = w.shape[0] if trans_b else w.shape[1]
        if c is not None and c.size != n_out:
            raise self.error(node, "bias of shape %s does not broadcast as InnerProduct's" % (c.shape,))
        p = caffe_pb2.InnerProductParameter(num_output=n_out, bias_term=c is not None, transpose=not trans_b)
        self.add(node, "InnerProduct", [x], blobs=[w] + ([c.reshape(-1)] if c is not None else []),
                 inner_product_param=p)

    def op_MatMul(self, node, a):
        x = self.data_input(node)
        w = self.const(node.input[1])
        if w is None or w.ndim != 2:
            raise self.error(node, "only MatMul(X, constant 2-D W) maps to InnerProduct")
        rank = len(self.shape(x) or ())
        bias, out = None, node.output[0]
        users = self.consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and out not in self.outputs:
            add = users[0]
            other = add.input[1] if add.input[0] == out else add.input[0]
            c = self.const(other)
            if c is not None and c.size == w.shape[1]:
                bias, out = c.reshape(-1), add.output[0]
        p = caffe_pb2.InnerProductParameter(num_output=w.shape[1], bias_term=bias is not None, transpose=True,
                                            axis=max(rank - 1, 1))
        self.add(node, "InnerProduct", [x], tops=[out], blobs=[w] + ([bias] if bias is not None else []),
                 inner_product_param=p)

    def op_Flatten(self, node, a):
        x = self.data_input(node)
        axis = a.get("axis", 1)
        shape = self.shape(x)
        if axis == 1:
            self.add(node, "Flatten", [x])
        else:
            out = self.shape(node.output[0])
            p = caffe_pb2.ReshapeParameter()
            p.shape.dim.extend([-1, out[1]] if axis > 0 else [1, -1])
            if shape is None:
                raise self.error(node, "input shape unknown")
            self.add(node, "Reshape", [x], reshape_param=p)

    def op_Reshape(self, node, a):
        x = self.data_input(node)
        target = self.const(node.input[1])
        if target is None or a.get("allowzero", 0):
            raise self.error(node, "the target shape must be a constant (and allowzero 0)")
        target = [int(v) for v in target.reshape(-1)]
        users = self.consumers.get(node.output[0], [])
        src_shape = self.shape(x)
        if users and node.output[0] not in self.outputs and all(u.op_type in ("Mul", "Add") for u in users) and \
                src_shape and tuple(target) == tuple(src_shape) + (1,) * (len(target) - len(src_shape)) and \
                all(self._other(u, node.output[0]) not in self.consts for u in users):
            self.pending[node.output[0]] = ("broadcast", x)   # a factor shaped to broadcast: Scale/Bias
            return
        src = self.batch_of.get(node.input[1])
        if src is not None and target and self.inputs and target[0] == self.shape(src)[0] == self.shape(x)[0]:
            target[0] = 0    # the batch size read from a shape: copy it, so other batch sizes work
        p = caffe_pb2.ReshapeParameter()
        p.shape.dim.extend(target)      # 0 copies, -1 infers: as Caffe's
        self.add(node, "Reshape", [x], reshape_param=p)

    def _pool_size(self, size, k, p, s, ceil):
        span = size + 2 * p - k
        o = (-(-span // s) if ceil else span // s) + 1
        if p and (o - 1) * s >= size + p:
            o -= 1
        return o

    def _pooling(self, node, a, method, x, extra_pad=(0, 0), source=None):
        """Caffe's Pooling for an ONNX pool of x; ``source``: the blob a folded zero Pad of
        ``extra_pad`` at the start read (then x is that Pad's output)."""
        P = caffe_pb2.PoolingParameter
        shape = self.shape(source or x)
        out = self.shape(node.output[0])
        if len(a.get("kernel_shape", [])) != 2 or shape is None or len(shape) != 4:
            raise self.error(node, "only 2-D pooling over (N, C, H, W) maps to Caffe's Pooling")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise self.error(node, "dilated pooling has no Caffe form")
        (kh, kw), (sh, sw) = a["kernel_shape"], a.get("strides", [1, 1])
        begin, end = self._spatial(node, a, 2)
        pad = [begin[0] + extra_pad[0], begin[1] + extra_pad[1]]
        H, W = shape[2:]
        if method == P.AVE:
            ok = (not a.get("count_include_pad", 0) and begin == [0, 0]) or \
                 (a.get("count_include_pad", 0) and not any(extra_pad) and all(e <= b for b, e in zip(begin, end)))
            if not ok:
                raise self.error(node, "this AveragePool's divisor (pads %s, count_include_pad %d) differs from "
                                 "Caffe's (the window clipped to the input padded alike on both sides)"
                                 % (a.get("pads"), a.get("count_include_pad", 0)))
        for mode in (P.CEIL, P.FLOOR):
            ceil = mode == P.CEIL
            if (self._pool_size(H, kh, pad[0], sh, ceil), self._pool_size(W, kw, pad[1], sw, ceil)) == tuple(out[2:]):
                break
        else:
            raise self.error(node, "output size %s matches neither of Caffe's roundings for pads %s" % (out, pad))
        p = caffe_pb2.PoolingParameter(pool=method, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
                                       pad_h=pad[0], pad_w=pad[1], round_mode=mode)
        self.add(node, "Pooling", [source or x], pooling_param=p)

    def op_MaxPool(self, node, a):
        if len(node.output) > 1 and node.output[1]:
            raise self.error(node, "the Indices output has no Caffe form")
        self._pooling(node, a, caffe_pb2.PoolingParameter.MAX, self.data_input(node))

    def op_AveragePool(self, node, a):
        x = node.input[0]
        if x in self.pending and self.pending[x][0] == "pad":
            src, begin, end = self.pending[x][1]
            cut = any(e < b for b, e in zip(begin, end))
            if cut and any(a.get("pads", [0] * 4)[2:]):
                raise self.error(node, "pads past a Pad that stopped short of Caffe's: no Caffe divisor")
            self._pooling(node, a, caffe_pb2.PoolingParameter.AVE, x, extra_pad=begin, source=src)
            return
        self._pooling(node, a, caffe_pb2.PoolingParameter.AVE, self.data_input(node))

    def op_Pad(self, node, a):
        """A zero Pad of H and W alike on both sides, folded into the AveragePool reading it."""
        x = self.data_input(node)
        pads = self.const(node.input[1]) if len(node.input) > 1 else np.asarray(a.get("pads", []))
        value = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        users = self.consumers.get(node.output[0], [])
        mode = a.get("mode", b"constant")
        if pads is None or len(pads) != 8 or any(pads[[0, 1, 4, 5]]) or min(pads[2], pads[3]) < 0 \
                or pads[6] > pads[2] or pads[7] > pads[3] \
                or mode not in (b"constant", "constant") or (value is not None and value.reshape(-1)[0] != 0) \
                or not users or any(u.op_type != "AveragePool" for u in users):
            raise self.error(node, "only a zero Pad of H and W (no more at the end than at the start) read by "
                             "AveragePool maps to Caffe (as Pooling's pad)")
        self.pending[node.output[0]] = ("pad", (x, [int(v) for v in pads[[2, 3]]], [int(v) for v in pads[[6, 7]]]))

    def op_GlobalMaxPool(self, node, a):
        self.add(node, "Pooling", [self.data_input(node)], pooling_param=caffe_pb2.PoolingParameter(
            pool=caffe_pb2.PoolingParameter.MAX, global_pooling=True))

    def op_GlobalAveragePool(self, node, a):
        self.add(node, "Pooling", [self.data_input(node)], pooling_param=caffe_pb2.PoolingParameter(
            pool=caffe_pb2.PoolingParameter.AVE, global_pooling=True))

    def op_LRN(self, node, a):
        size = a["size"]
        if size % 2 != 1:
            raise self.error(node, "even size %d: Caffe's LRN takes odd sizes" % size)
        self.add(node, "LRN", [self.data_input(node)], lrn_param=caffe_pb2.LRNParameter(
            local_size=size, alpha=a.get("alpha", 1e-4), beta=a.get("beta", 0.75), k=a.get("bias", 1.0)))

    # neurons
    def op_Relu(self, node, a):
        self.add(node, "ReLU", [self.data_input(node)])

    def op_LeakyRelu(self, node, a):
        self.add(node, "ReLU", [self.data_input(node)],
                 relu_param=caffe_pb2.ReLUParameter(negative_slope=a.get("alpha", 0.01)))

    def op_PRelu(self, node, a):
        x = self.data_input(node)
        slope = self.const(node.input[1])
        shape = self.shape(x)
        if slope is None:
            raise self.error(node, "the slope must be a constant")
        if slope.size == 1:
            self.add(node, "PReLU", [x], blobs=[slope.reshape(())],
                     prelu_param=caffe_pb2.PReLUParameter(channel_shared=True))
            return
        if shape is None or len(shape) < 2 or slope.size != shape[1] or \
                len(slope.shape) > len(shape) - 1 or slope.shape[0] != shape[1]:
            raise self.error(node, "slope of shape %s is not one per channel of %s" % (slope.shape, shape))
        self.add(node, "PReLU", [x], blobs=[slope.reshape(-1)])

    def op_Elu(self, node, a):
        self.add(node, "ELU", [self.data_input(node)], elu_param=caffe_pb2.ELUParameter(alpha=a.get("alpha", 1.0)))

    def op_Sigmoid(self, node, a):
        self.add(node, "Sigmoid", [self.data_input(node)])

    def op_Tanh(self, node, a):
        self.add(node, "TanH", [self.data_input(node)])

    def op_Abs(self, node, a):
        self.add(node, "AbsVal", [self.data_input(node)])

    def op_Softplus(self, node, a):
        self.add(node, "BNLL", [self.data_input(node)])

    def op_Exp(self, node, a):
        self.add(node, "Exp", [self.data_input(node)])

    def op_Log(self, node, a):
        self.add(node, "Log", [self.data_input(node)])

    def op_Clip(self, node, a):
        lo = self.scalar(node, node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("min")
        hi = self.scalar(node, node.input[2]) if len(node.input) > 2 and node.input[2] else a.get("max")
        if lo is None or hi is None:
            raise self.error(node, "Caffe's Clip needs both bounds")
        self.add(node, "Clip", [self.data_input(node)], clip_param=caffe_pb2.ClipParameter(min=lo, max=hi))

    def op_Identity(self, node, a):
        self.alias(node.output[0], node.input[0])
        if node.input[0] in self.consts:
            raise self.error(node, "Identity of a constant has no Caffe form")

    def op_Dropout(self, node, a):
        self.op_Identity(node, a)     # inference: the identity

    def op_Cast(self, node, a):
        src = node.input[0]
        if src in self.pending and self.pending[src][0] == "argmax":
            x, axis = self.pending[src][1]
            self.add(node, "ArgMax", [x], argmax_param=caffe_pb2.ArgMaxParameter(axis=axis, top_k=1))
            return
        if src in self.pending and self.pending[src][0] == "greater":
            x, t = self.pending[src][1]
            self.add(node, "Threshold", [x], threshold_param=caffe_pb2.ThresholdParameter(threshold=t))
            return
        users = self.consumers.get(node.output[0], [])
        if a.get("to") == 7 and users and all(u.op_type == "Gather" for u in users):
            self.pending[node.output[0]] = ("indices", src)    # Embed reads float indices itself
            return
        if a.get("to") != 1:
            raise self.error(node, "casts to type %d; Caffe blobs are float" % a.get("to"))
        self.alias(node.output[0], src)

    def op_Greater(self, node, a):
        x = self.data_input(node)
        self.pending[node.output[0]] = ("greater", (x, self.scalar(node, node.input[1])))

    def op_Gather(self, node, a):
        w, idx = self.const(node.input[0]), node.input[1]
        if w is None or w.ndim != 2 or a.get("axis", 0) != 0:
            raise self.error(node, "only Gather(constant 2-D table, indices) on axis 0 maps to Embed")
        src = self.pending[idx][1] if idx in self.pending and self.pending[idx][0] == "indices" else idx
        bias, out = None, node.output[0]
        users = self.consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and out not in self.outputs:
            other = users[0].input[1] if users[0].input[0] == out else users[0].input[0]
            c = self.const(other)
            if c is not None and c.size == w.shape[1]:
                bias, out = c.reshape(-1), users[0].output[0]
        p = caffe_pb2.EmbedParameter(num_output=w.shape[1], input_dim=w.shape[0], bias_term=bias is not None)
        self.add(node, "Embed", [src], tops=[out], blobs=[w] + ([bias] if bias is not None else []), embed_param=p)

    # arithmetic: with a constant it is Power/Scale/Bias, between blobs Eltwise
    def _broadcast_param(self, node, x, c):
        """(axis, values) for a constant broadcast against blob x as Caffe's Scale/Bias take it."""
        shape = self.shape(x)
        if shape is None:
            raise self.error(node, "input shape unknown")
        cs = list(c.shape)
        while cs and cs[0] == 1 and len(cs) > 0:
            cs.pop(0)
        lead = len(shape) - len(cs)
        while cs and cs[-1] == 1:
            cs.pop()
        if list(shape[lead:lead + len(cs)]) != cs:
            raise self.error(node, "a constant of shape %s is not one value per position of consecutive axes "
                             "of %s" % (c.shape, shape))
        return lead, c.reshape(cs) if cs else c.reshape(())

    @staticmethod
    def _other(node, tensor):
        return node.input[1] if node.input[0] == tensor else node.input[0]

    def _two_bottom(self, node, op):
        """Mul/Add of a blob and a factor blob broadcast over it: Scale/Bias with two bottoms, or None."""
        if op not in ("Mul", "Add"):
            return None
        x0, x1 = node.input[0], node.input[1]
        for x, f in ((x0, x1), (x1, x0)):
            shaped = self.shape(f)
            src = f
            if f in self.pending and self.pending[f][0] == "broadcast":
                src = self.pending[f][1]
            sx, sf = self.shape(x), self.shape(src)
            if sx is None or sf is None or shaped is None or len(shaped) > len(sx) or (sx == shaped and src == f):
                continue
            axis = len(sx) - len(shaped)
            if tuple(sx[axis:axis + len(sf)]) == tuple(sf) and \
                    tuple(shaped) == tuple(sf) + (1,) * (len(shaped) - len(sf)):
                if op == "Mul":
                    return self.add(node, "Scale", [x, src], scale_param=caffe_pb2.ScaleParameter(axis=axis))
                return self.add(node, "Bias", [x, src], bias_param=caffe_pb2.BiasParameter(axis=axis))
        return None

    def _arith(self, node, op):
        x0, x1 = node.input[0], node.input[1]
        c0, c1 = self.const(x0), self.const(x1)
        if c0 is None and c1 is None:
            s0, s1 = self.shape(x0), self.shape(x1)
            if self._two_bottom(node, op) is not None:
                return
            if s0 != s1:
                raise self.error(node, "inputs of shapes %s and %s: Caffe's Eltwise needs equal shapes" % (s0, s1))
            E = caffe_pb2.EltwiseParameter
            if op == "Sub":
                p = E(operation=E.SUM)
                p.coeff.extend([1.0, -1.0])
            elif op == "Div":
                raise self.error(node, "division of two blobs has no Caffe layer")
            else:
                p = E(operation={"Add": E.SUM, "Mul": E.PROD}[op])
            self.add(node, "Eltwise", [self.data_input(node, 0), self.data_input(node, 1)], eltwise_param=p)
            return
        if c0 is not None and c1 is not None:
            raise self.error(node, "both inputs are constants")
        x, c = (x1, c0) if c1 is None else (x0, c1)
        if op in ("Sub", "Div") and c1 is None:
            raise self.error(node, "a constant minus/over a blob has no Caffe layer")
        x = self.data_input(node, 1 if c1 is None else 0)
        if c.size == 1:
            v = float(c.reshape(-1)[0])
            if op == "Div":
                raise self.error(node, "division by a constant: Caffe multiplies (x * (1/c) rounds differently)")
            scale = v if op == "Mul" else 1.0
            shift = {"Add": v, "Sub": -v}.get(op, 0.0)
            self.add(node, "Power", [x], power_param=caffe_pb2.PowerParameter(power=1.0, scale=scale, shift=shift))
            return
        if op == "Div":
            raise self.error(node, "division by a constant: Caffe multiplies (x * (1/c) rounds differently)")
        axis, values = self._broadcast_param(node, x, c)
        if op == "Mul":
            self.add(node, "Scale", [x], blobs=[values], scale_param=caffe_pb2.ScaleParameter(
                axis=axis, num_axes=values.ndim))
        else:
            self.add(node, "Bias", [x], blobs=[values if op == "Add" else -values],
                     bias_param=caffe_pb2.BiasParameter(axis=axis, num_axes=values.ndim))

    def op_Add(self, node, a):
        if node.output[0] in self.blob:      # folded into the InnerProduct/Embed before it
            return
        self._arith(node, "Add")

    def op_Sub(self, node, a):
        self._arith(node, "Sub")

    def op_Mul(self, node, a):
        self._arith(node, "Mul")

    def op_Div(self, node, a):
        self._arith(node, "Div")

    def op_Pow(self, node, a):
        self.add(node, "Power", [self.data_input(node)],
                 power_param=caffe_pb2.PowerParameter(power=self.scalar(node, node.input[1])))

    def op_Sum(self, node, a):
        E = caffe_pb2.EltwiseParameter
        self.add(node, "Eltwise", [self.data_input(node, i) for i in range(len(node.input))],
                 eltwise_param=E(operation=E.SUM))

    def op_Max(self, node, a):
        E = caffe_pb2.EltwiseParameter
        self.add(node, "Eltwise", [self.data_input(node, i) for i in range(len(node.input))],
                 eltwise_param=E(operation=E.MAX))

    def op_BatchNormalization(self, node, a):
        x = self.data_input(node)
        gamma, beta, mean, var = (self.const(n) for n in node.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)) or len(node.output) > 1 and any(node.output[1:]):
            raise self.error(node, "needs constant scale, bias, mean and variance, and inference outputs only")
        p = caffe_pb2.BatchNormParameter(use_global_stats=True, eps=a.get("epsilon", 1e-5))
        plain = np.all(gamma == 1) and np.all(beta == 0)
        tops = list(node.output[:1]) if plain else [node.output[0] + "_bn"]
        self.add(node, "BatchNorm", [x], tops=tops, blobs=[mean, var, np.ones(1)], batch_norm_param=p)
        if not plain:
            self.add(node, "Scale", [tops[0]], blobs=[gamma, beta],
                     scale_param=caffe_pb2.ScaleParameter(bias_term=True))

    def op_Concat(self, node, a):
        self.add(node, "Concat", [self.data_input(node, i) for i in range(len(node.input))],
                 concat_param=caffe_pb2.ConcatParameter(axis=a["axis"]))

    def op_Split(self, node, a):
        x = self.data_input(node)
        shape = self.shape(x)
        axis = a.get("axis", 0) % len(shape)
        sizes = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else a.get("split")
        if sizes is None:
            n = len(node.output)
            sizes = [shape[axis] // n] * n
        p = caffe_pb2.SliceParameter(axis=axis)
        p.slice_point.extend(np.cumsum(sizes)[:-1].astype(int).tolist())
        self.add(node, "Slice", [x], tops=list(node.output), slice_param=p)

    def op_Slice(self, node, a):
        """Constant starts/ends, step 1: one Caffe Slice per axis, the parts cut off silenced."""
        x = self.data_input(node)
        shape = self.shape(x)
        args = [self.const(n) if len(node.input) > i and node.input[i] else None
                for i, n in enumerate(list(node.input) + [""] * 5) if 1 <= i <= 4]
        starts, ends, axes, steps = args
        if starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) \
                or (steps is not None and np.any(steps != 1)) or (len(node.input) > 4 and node.input[4] and steps is None):
            raise self.error(node, "only constant starts/ends/axes with step 1 map to Caffe's Slice")
        axes = range(len(starts)) if axes is None else axes
        src = self.blob.get(x, x)
        for k, (s, e, ax) in enumerate(zip(starts, ends, axes)):
            ax = int(ax) % len(shape)
            n = shape[ax]
            s, e = (int(v) + n if v < 0 else int(v) for v in (s, e))
            s, e = min(max(s, 0), n), min(max(e, 0), n)
            if (s, e) == (0, n):
                continue
            points = [v for v in (s, e) if 0 < v < n]
            mid = self.unique("%s_axis%d" % (node.output[0], ax))
            tops = ([self.unique(mid + "_before")] if s > 0 else []) + [mid] + \
                   ([self.unique(mid + "_after")] if e < n else [])
            p = caffe_pb2.SliceParameter(axis=ax)
            p.slice_point.extend(points)
            lp = self.net.layer.add(name=self.unique(node.name or node.output[0]), type="Slice")
            lp.bottom.append(src)
            lp.top.extend(tops)
            lp.slice_param.CopyFrom(p)
            cut = [t for t in tops if t != mid]
            silence = self.net.layer.add(name=self.unique(mid + "_cut"), type="Silence")
            silence.bottom.extend(cut)
            src = mid
        self.blob[node.output[0]] = src

    def op_Softmax(self, node, a):
        x = self.data_input(node)
        rank = len(self.shape(x))
        axis = a.get("axis", -1 if self.opset >= 13 else 1) % rank
        if self.opset < 13 and axis != rank - 1:
            raise self.error(node, "opset %d Softmax flattens the axes from %d; Caffe's works on one axis"
                             % (self.opset, axis))
        self.add(node, "Softmax", [x], softmax_param=caffe_pb2.SoftmaxParameter(axis=axis))

    def op_Tile(self, node, a):
        x = self.data_input(node)
        reps = self.const(node.input[1])
        axes = [i for i, r in enumerate(reps)] if reps is not None else []
        big = [i for i in axes if reps[i] != 1]
        if reps is None or len(big) > 1:
            raise self.error(node, "only a constant repeat along one axis maps to Tile")
        if not big:
            self.alias(node.output[0], x)
            return
        self.add(node, "Tile", [x], tile_param=caffe_pb2.TileParameter(axis=big[0], tiles=int(reps[big[0]])))

    def _reduce(self, node, a, op):
        x = self.data_input(node)
        rank = len(self.shape(x))
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1]).tolist()
        axes = sorted(v % rank for v in (axes if axes is not None else range(rank)))
        if a.get("keepdims", 1) or axes != list(range(axes[0], rank)):
            raise self.error(node, "only a reduction over the trailing axes with keepdims 0 maps to Reduction")
        R = caffe_pb2.ReductionParameter
        self.add(node, "Reduction", [x], reduction_param=R(operation=getattr(R, op), axis=axes[0]))

    def op_ReduceSum(self, node, a):
        self._reduce(node, a, "SUM")

    def op_ReduceL1(self, node, a):
        self._reduce(node, a, "ASUM")

    def op_ReduceSumSquare(self, node, a):
        self._reduce(node, a, "SUMSQ")

    def op_ReduceMean(self, node, a):
        if a.get("keepdims", 1):
            return self._mvn(node, a)
        self._reduce(node, a, "MEAN")

    def _only_user(self, tensor, op_type):
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs:
            return users[0]
        return None

    def _axes(self, node, a, rank):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1]).tolist()
        return sorted(v % rank for v in axes) if axes is not None else list(range(rank))

    def _mvn(self, node, a):
        """x - mean(x) [/ (sqrt(mean((x - mean)^2)) + eps)] over (C,) H, W: Caffe's MVN, as exported."""
        x = self.data_input(node)
        rank = len(self.shape(x))
        axes = self._axes(node, a, rank)
        sub = self._only_user(node.output[0], "Sub")
        if axes == [0] + list(range(2, rank)) and sub is not None and sub.input[0] == x:
            return self._batch_stats(node, x, sub, axes, rank)
        if axes not in (list(range(1, rank)), list(range(2, rank))) or sub is None or sub.input[0] != x:
            raise self.error(node, "a ReduceMean keeping its axes maps to Caffe only as MVN's x - mean(x) "
                             "over the axes from 1 or 2 on")
        y, taken = sub.output[0], [sub]
        out, p = y, caffe_pb2.MVNParameter(normalize_variance=False, across_channels=axes[0] == 1)
        sq = [u for u in self.consumers.get(y, []) if u.op_type == "Mul" and list(u.input) == [y, y]]
        if sq:
            var = self._only_user(sq[0].output[0], "ReduceMean")
            std = var and self._only_user(var.output[0], "Sqrt")
            add = std and self._only_user(std.output[0], "Add")
            div = add and self._only_user(add.output[0], "Div")
            eps = add and self.const(add.input[1])
            if div is None or eps is None or eps.size != 1 or list(div.input) != [y, add.output[0]] or \
                    self._axes(var, self.attrs(var), rank) != axes:
                raise self.error(node, "this normalisation is not Caffe's MVN pattern (x - mean) / (std + eps)")
            taken += [sq[0], var, std, add, div]
            out = div.output[0]
            p.normalize_variance, p.eps = True, float(eps.reshape(-1)[0])
        if out != y and len({id(u) for u in self.consumers.get(y, [])}) != 2:
            raise self.error(node, "the centred values are read elsewhere too; Caffe's MVN gives only its output")
        self.skip.update(n.output[0] for n in taken)
        self.add(node, "MVN", [x], tops=[out], mvn_param=p)

    def _batch_stats(self, node, x, sub, axes, rank):
        """(x - mean) / sqrt(var + eps) over N, H, W: Caffe's BatchNorm on batch statistics."""
        y = sub.output[0]
        sq = [u for u in self.consumers.get(y, []) if u.op_type == "Mul" and list(u.input) == [y, y]]
        var = sq and self._only_user(sq[0].output[0], "ReduceMean")
        add = var and self._only_user(var.output[0], "Add")
        std = add and self._only_user(add.output[0], "Sqrt")
        div = std and self._only_user(std.output[0], "Div")
        eps = add and self.const(add.input[1])
        if not div or eps is None or eps.size != 1 or list(div.input) != [y, std.output[0]] or \
                self._axes(var, self.attrs(var), rank) != axes or len({id(u) for u in self.consumers[y]}) != 2:
            raise self.error(node, "this normalisation over N, H, W is not Caffe's BatchNorm pattern "
                             "(x - mean) / sqrt(var + eps)")
        self.skip.update(n.output[0] for n in (sub, sq[0], var, add, std, div))
        c = self.shape(x)[1]
        self.add(node, "BatchNorm", [x], tops=[div.output[0]], blobs=[np.zeros(c), np.zeros(c), np.ones(1)],
                 batch_norm_param=caffe_pb2.BatchNormParameter(use_global_stats=False,
                                                               eps=float(eps.reshape(-1)[0])))

    def op_LSTM(self, node, a):
        """ONNX's LSTM (forward, default activations, zero initial state) as Caffe's LSTM layer.

        Caffe's LSTM takes a second bottom, ``cont`` (T, N): the importer adds it as an input
        named after its output + "_cont"; feed 0 at t = 0 and 1 after (a sequence start), which is what ONNX's
        LSTM computes. Gates are reordered from ONNX's (i, o, f, c) to Caffe's (i, f, o, g)."""
        x = self.data_input(node)
        w, r = self.const(node.input[1]), self.const(node.input[2])
        b = self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        extra = [n for n in node.input[4:] if n]
        acts = [v.decode() if isinstance(v, bytes) else v for v in a.get("activations", [])]
        if w is None or r is None or w.shape[0] != 1 or a.get("direction", b"forward") not in (b"forward", "forward") \
                or extra or a.get("clip") is not None or a.get("input_forget", 0) or a.get("layout", 0) \
                or acts not in ([], ["Sigmoid", "Tanh", "Tanh"]):
            raise self.error(node, "only a forward LSTM with constant weights, default activations, no clip, "
                             "no sequence_lens, initial state or peepholes maps to Caffe's LSTM")
        if any(o in self.consumers or o in self.outputs for o in node.output[1:] if o):
            raise self.error(node, "Y_h/Y_c are read: Caffe's LSTM gives them only with expose_hidden "
                             "and initial-state bottoms")
        H = int(a["hidden_size"])
        order = np.concatenate([np.arange(k * H, (k + 1) * H) for k in (0, 2, 1, 3)])   # i,o,f,c -> i,f,o,g
        bias = np.zeros(4 * H, np.float32) if b is None else b[0, :4 * H] + b[0, 4 * H:]
        T, N = self.shape(x)[:2]
        cont = self.unique(node.output[0] + "_cont")
        inp = self.net.layer.add(name=cont, type="Input")
        inp.top.append(cont)
        inp.input_param.shape.add().dim.extend([T, N])
        seq = self.unique(node.output[0] + "_seq")
        p = caffe_pb2.RecurrentParameter(num_output=H)
        self.add(node, "LSTM", [x, cont], tops=[seq], blobs=[w[0][order], bias[order], r[0][order]],
                 recurrent_param=p)
        if node.output[0]:
            rp = caffe_pb2.ReshapeParameter()
            rp.shape.dim.extend([0, 1, -1, H])      # ONNX's Y is (T, num_directions, N, H)
            lp = self.net.layer.add(name=self.unique(node.output[0]), type="Reshape")
            lp.bottom.append(seq)
            lp.top.append(node.output[0])
            lp.reshape_param.CopyFrom(rp)
            self.blob[node.output[0]] = node.output[0]

    def op_ArgMax(self, node, a):
        x = self.data_input(node)
        if not a.get("select_last_index", 0) or not a.get("keepdims", 1):
            raise self.error(node, "Caffe's ArgMax keeps the axis and takes the last of equal values: "
                             "needs keepdims 1 and select_last_index 1")
        users = self.consumers.get(node.output[0], [])
        if not users or any(u.op_type != "Cast" or self.attrs(u).get("to") != 1 for u in users):
            raise self.error(node, "its indices must be cast to float (Caffe's ArgMax writes float)")
        self.pending[node.output[0]] = ("argmax", (x, a.get("axis", 0) % len(self.shape(x))))


def onnx_to_caffe(model, input_shapes=None):
    """(NetParameter, weights NetParameter) for an onnx.ModelProto (or a path to one)."""
    _require_onnx()
    import onnx
    if not isinstance(model, onnx.ModelProto):
        path = str(model)
        try:
            model = onnx.load(path)
        except Exception as e:     # a missing file, or bytes that are no ModelProto
            raise OnnxImportError("%s: cannot read an ONNX model (%s)" % (path, e)) from None
    return _Importer(model, dict(input_shapes or {})).run()


def import_model(onnx_path, prototxt_path, weights_path, input_shapes=None):
    """ONNX file -> net prototxt and caffemodel (each written atomically)."""
    net, weights = onnx_to_caffe(onnx_path, input_shapes)
    write_text(net, prototxt_path)
    write_binary(weights, weights_path)
    return net, weights
