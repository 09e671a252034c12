"""Net: Caffe's graph of layers and blobs, built for one phase.

Building a net is Caffe's ``Net::Init``: keep the layers the NetState
includes, add Split layers where a blob has several consumers, then walk the
layers in order, connecting each bottom to the blob of that name and creating
a blob for each new top (a top named like its bottom at the same index is
in-place). After every layer is set up, one backward sweep decides which
layers and bottoms need gradients. Forward runs the layers in order and sums
the weighted loss tops; backward runs them in reverse, each layer
overwriting its bottom diffs and adding into its parameter diffs.

The attribute and method names are pycaffe's (``blobs``, ``params``,
``forward(start=..., end=...)``, ...), so IPython sessions written for Caffe
work as they are.
"""
import logging
import os
from collections import OrderedDict

from netspec import caffe_pb2
from netspec.errors import CaffeError, LayerError, NetError
from netspec.io import atomic_write_bytes, read_binary, read_net
from netspec.upgrade import upgrade_net
from solvers.blob import Blob
from solvers.caffemodel import NotStreamable, iter_layers
from solvers.insert_splits import insert_splits
from solvers.layer import create_layer
from solvers import threads
from solvers.net_state import filter_net

log = logging.getLogger(__name__)

AUTOMATIC_TOP = "(automatic)"   # Caffe's name for tops a layer adds itself (AutoTopBlobs)


# -- reading nets and weights ------------------------------------------------

def read_net_param(source):
    """A NetParameter (upgraded from old formats) from a message, a prototxt path or prototxt text."""
    if not isinstance(source, (caffe_pb2.NetParameter, str, os.PathLike)):
        raise NetError("Net needs a NetParameter, a prototxt path or prototxt text, got %s"
                       % type(source).__name__)
    return read_net(source)   # copies a message; ProtoError names file, line and column


def _require_weights_file(path):
    """A NetError naming the path as written, resolved and the working directory, unless it is a file."""
    if not os.path.isfile(path):
        raise NetError("weights file %r not found (resolved to %s, working directory %s)"
                       % (path, os.path.abspath(path), os.getcwd()))


def read_weights(source):
    """A NetParameter holding trained blobs, from a message or a binary .caffemodel path."""
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
    else:
        path = os.fspath(source)
        _require_weights_file(path)
        param = read_binary(path, caffe_pb2.NetParameter)
    upgrade_net(param)   # V1 caffemodels hold their blobs in 'layers'
    return param


def _phase_value(phase):
    if isinstance(phase, str):
        try:
            return caffe_pb2.Phase.Value(phase.upper())
        except ValueError:
            raise NetError("unknown phase %r: use TRAIN or TEST" % phase) from None
    if int(phase) not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise NetError("unknown phase %r: use caffe_pb2.TRAIN (0) or caffe_pb2.TEST (1)" % (phase,))
    return int(phase)


def _proto_shape(proto):
    if proto.HasField("shape"):
        return tuple(proto.shape.dim)
    return (proto.num, proto.channels, proto.height, proto.width)


def _shape_matches(shape, proto):
    """Caffe's Blob::ShapeEquals: a legacy 4-d proto matches shapes padded with leading 1s."""
    if proto.HasField("shape"):
        return tuple(proto.shape.dim) == tuple(shape)
    if len(shape) > 4:
        return False
    return (1,) * (4 - len(shape)) + tuple(shape) == _proto_shape(proto)


def _asum_mean(xp, a):
    return float(xp.abs(a).sum()) / max(a.size, 1)


# -- the net ------------------------------------------------------------------

class Net:
    """Layers and blobs of one phase of a NetParameter, as Caffe's Net.

    ``Net(net_param_or_path, phase=None, level=0, stages=(), weights=None)``:
    ``phase`` (TRAIN/TEST, enum or name) overrides ``state.phase``; a nonzero
    ``level`` overrides ``state.level``; ``stages`` are added to
    ``state.stage``; ``weights`` is a caffemodel copied in after set-up.
    pycaffe's legacy ``Net(model, weights_path, phase)`` is accepted too.
    """

    def __init__(self, net_param_or_path, phase=None, level=0, stages=(), weights=None):
        if isinstance(phase, (str, os.PathLike)) and (os.fspath(phase).endswith((".caffemodel", ".h5"))
                                                      or os.path.isfile(phase)):
            # pycaffe's old signature Net(model, pretrained, phase)
            weights, phase, level = phase, level, 0
        threads.apply_default()   # BLAS never takes more cores than are free (solvers/threads.py)
        param = read_net_param(net_param_or_path)
        if phase is not None:
            param.state.phase = _phase_value(phase)
        if level:
            param.state.level = int(level)
        if isinstance(stages, str):
            stages = [stages]
        param.state.stage.extend(stages or ())
        self._init(param)
        if weights is not None:
            self.copy_from(weights)

    # -- construction (Caffe's Net::Init) ----------------------------------
    def _init(self, in_param):
        self.phase = in_param.state.phase
        filtered = filter_net(in_param)
        if log.isEnabledFor(logging.INFO):
            from google.protobuf import text_format
            log.info("Initializing net from parameters: \n%s", text_format.MessageToString(filtered))
        param = insert_splits(filtered)
        self.net_param = param
        self.name = param.name
        self.debug_info = param.debug_info

        self.layers, self.layer_names = [], []
        self._blobs, self._blob_names = [], []
        self._blob_need_backward = []
        self.bottom_vecs, self.top_vecs = [], []
        self._bottom_ids, self._top_ids = [], []
        self.bottom_need_backward, self.layer_need_backward = [], []
        self._input_ids = []
        self._top_loss_weights = []    # per layer: loss weight of each top
        self._layer_loss = []          # per layer: [(top blob, weight)] with nonzero weight
        self._blob_loss = {}           # blob index -> loss weight
        self._params = []              # every parameter blob, shared ones included
        self._param_display_names = []
        self._param_owners = []        # -1: owns itself, else index of the owner in _params
        self._param_layer_indices = []  # (layer index, blob index within the layer)
        self._param_ids = []           # per layer: indices into _params
        self._param_names_index = {}
        self._learnable_param_ids = []  # per entry of _params: index into learnable_params
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self._has_params_lr, self._has_params_decay = [], []

        name_to_idx, available = {}, set()
        memory_used = 0
        for layer_id, lp in enumerate(param.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise NetError("layer %r: propagate_down is given %d times for %d bottoms; give it "
                               "once per bottom or not at all"
                               % (lp.name, len(lp.propagate_down), len(lp.bottom)))
            layer = create_layer(lp)
            log.info("Creating Layer %s", lp.name)
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            need_backward = self._connect(lp, layer, name_to_idx, available)
            self._setup_layer(layer_id, lp, layer)
            memory_used += sum(top.count for top in self.top_vecs[layer_id])
            need_backward |= self._setup_params(layer_id, lp, layer)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for blob_id in self._top_ids[layer_id]:
                    self._blob_need_backward[blob_id] = True

        self._decide_backward()
        if param.force_backward:
            self._force_backward()
        for layer, need in zip(self.layers, self.layer_need_backward):
            if not need and hasattr(layer, "need_backward"):
                layer.need_backward = False   # it may drop what only backward would read
        self._output_ids = [name_to_idx[n] for n in sorted(available)]
        for n in sorted(available):
            log.info("This network produces output %s", n)
        self._share_weights()
        self._build_views()
        log.info("Network initialization done.")
        log.info("Memory required for data: %d", memory_used * 4)

    def _connect(self, lp, layer, name_to_idx, available):
        """Hook the layer's bottoms and tops to net blobs; True if a bottom needs backward."""
        bottoms, bottom_ids, bottom_need = [], [], []
        need_backward = False
        for bottom_id, name in enumerate(lp.bottom):
            if name not in available:
                raise NetError("layer %r (type %s): unknown bottom blob %r (bottom %d); blobs "
                               "available here: %s" % (lp.name, lp.type, name, bottom_id,
                                                       ", ".join(sorted(available)) or "none"))
            blob_id = name_to_idx[name]
            available.discard(name)
            log.info("%s <- %s", lp.name, name)
            bottoms.append(self._blobs[blob_id])
            bottom_ids.append(blob_id)
            propagate = lp.propagate_down[bottom_id] if len(lp.propagate_down) else True
            bottom_need.append(self._blob_need_backward[blob_id] and bool(propagate))
            need_backward |= self._blob_need_backward[blob_id]
        tops, top_ids = [], []
        for top_id, name in enumerate(lp.top):
            if top_id < len(lp.bottom) and name == lp.bottom[top_id]:
                log.info("%s -> %s (in-place)", lp.name, name)
                blob_id = name_to_idx[name]
            elif name in name_to_idx:
                producer = self._producer_of(name_to_idx[name])
                raise NetError("layer %r (type %s): top %r is already produced by layer %r; a top may "
                               "reuse a name only in place (same name as the bottom at the same index)"
                               % (lp.name, lp.type, name, producer))
            else:
                log.info("%s -> %s", lp.name, name)
                blob_id = self._new_blob(name)
                name_to_idx[name] = blob_id
            available.add(name)
            tops.append(self._blobs[blob_id])
            top_ids.append(blob_id)
            if lp.type == "Input":
                self._input_ids.append(blob_id)
        if layer.auto_top_blobs:
            needed = max(layer.min_top or 0, layer.exact_num_top or 0)
            while len(tops) < needed:
                blob_id = self._new_blob(AUTOMATIC_TOP)   # not usable as anyone's bottom
                tops.append(self._blobs[blob_id])
                top_ids.append(blob_id)
        self.bottom_vecs.append(bottoms)
        self._bottom_ids.append(bottom_ids)
        self.bottom_need_backward.append(bottom_need)
        self.top_vecs.append(tops)
        self._top_ids.append(top_ids)
        return need_backward

    def _new_blob(self, name):
        self._blobs.append(Blob())
        self._blob_names.append(name)
        self._blob_need_backward.append(False)
        return len(self._blobs) - 1

    def _producer_of(self, blob_id):
        for i, ids in enumerate(self._top_ids):
            if blob_id in ids:
                return self.layer_names[i]
        return "?"

    def _setup_layer(self, layer_id, lp, layer):
        """Layer::SetUp plus SetLossWeights; failures name the layer."""
        bottoms, tops = self.bottom_vecs[layer_id], self.top_vecs[layer_id]
        if layer.is_loss and len(lp.loss_weight) == 0:
            # Loss layers weigh their first top by 1 (Caffe writes this into the layer's param).
            lp.loss_weight.extend([1.0] + [0.0] * (len(tops) - 1))
        log.info("Setting up %s", lp.name)
        try:
            layer.setup(bottoms, tops)
        except CaffeError as e:
            if repr(lp.name) in str(e) or ("layer %s" % lp.name) in str(e):
                raise
            raise type(e)("layer %r (type %s): %s" % (lp.name, lp.type, e)) from e
        except Exception as e:
            raise LayerError("layer %r (type %s): set-up failed: %s: %s"
                             % (lp.name, lp.type, type(e).__name__, e)) from e
        self._load_param_blobs(lp, layer)
        n = len(lp.loss_weight)
        if n and n != len(tops):
            raise NetError("layer %r (type %s): loss_weight is given %d times for %d tops; give it "
                           "once per top or not at all" % (lp.name, lp.type, n, len(tops)))
        weights = [float(lp.loss_weight[i]) if n else 0.0 for i in range(len(tops))]
        self._top_loss_weights.append(weights)
        losses = []
        for top_id, (top, w) in enumerate(zip(tops, weights)):
            blob_id = self._top_ids[layer_id][top_id]
            self._blob_loss[blob_id] = w
            log.info("Top shape: %s", top.shape_string())
            if w:
                log.info("    with loss weight %g", w)
                top.diff[...] = w
                losses.append((top, w))
        self._layer_loss.append(losses)

    def _load_param_blobs(self, lp, layer):
        """Blobs stored in the LayerParameter itself (Caffe's Layer constructor copies them)."""
        if not len(lp.blobs):
            return
        if not layer.blobs:
            for j, proto in enumerate(lp.blobs):
                b = Blob()
                b.from_proto(proto, reshape=True, name="layer %r blob %d" % (lp.name, j))
                layer.blobs.append(b)
            layer.param_propagate_down = [True] * len(layer.blobs)
        else:
            self._copy_layer_blobs(layer, lp, "the layer's own 'blobs'")

    def _setup_params(self, layer_id, lp, layer):
        """lr_mult > 0 makes a parameter (and so the layer) need backward; register the params."""
        nblobs = len(layer.blobs)
        if len(lp.param) > nblobs:
            raise NetError("layer %r (type %s): %d param specs given but the layer has only %d "
                           "parameter blob(s)" % (lp.name, lp.type, len(lp.param), nblobs))
        default = caffe_pb2.ParamSpec()
        propagate = [(lp.param[j] if j < len(lp.param) else default).lr_mult > 0 for j in range(nblobs)]
        layer.param_propagate_down = propagate
        self._param_ids.append([])
        for j in range(nblobs):
            self._append_param(layer_id, lp, layer, j)
        return any(propagate)

    def _append_param(self, layer_id, lp, layer, param_id):
        spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
        name = spec.name
        self._param_display_names.append(name or str(param_id))
        net_param_id = len(self._params)
        self._params.append(layer.blobs[param_id])
        self._param_ids[layer_id].append(net_param_id)
        self._param_layer_indices.append((layer_id, param_id))
        if not name or name not in self._param_names_index:
            # This layer owns the blob: anonymous, or the first use of its name.
            self._param_owners.append(-1)
            if name:
                self._param_names_index[name] = net_param_id
            self._learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[param_id])
            self._has_params_lr.append(spec.HasField("lr_mult"))
            self._has_params_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(float(spec.lr_mult))
            self.params_weight_decay.append(float(spec.decay_mult))
            return
        owner_id = self._param_names_index[name]
        self._param_owners.append(owner_id)
        owner_layer, owner_j = self._param_layer_indices[owner_id]
        log.info("Sharing parameters '%s' owned by layer '%s', param index %d",
                 name, self.layer_names[owner_layer], owner_j)
        mine, owner = layer.blobs[param_id], self._params[owner_id]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if mine.count != owner.count:
                raise NetError("layer %r param %d shares %r with layer %r param %d: shared parameter "
                               "blobs must have the same count (%s vs %s)"
                               % (lp.name, param_id, name, self.layer_names[owner_layer], owner_j,
                                  mine.shape, owner.shape))
        elif mine.shape != owner.shape:
            raise NetError("layer %r param %d shares %r with layer %r param %d but the shapes differ "
                           "(%s vs %s); use share_mode: PERMISSIVE to only compare counts"
                           % (lp.name, param_id, name, self.layer_names[owner_layer], owner_j,
                              mine.shape, owner.shape))
        lid = self._learnable_param_ids[owner_id]
        self._learnable_param_ids.append(lid)
        for has, values, field, what in ((self._has_params_lr, self.params_lr, "lr_mult", "lr_mult"),
                                         (self._has_params_decay, self.params_weight_decay,
                                          "decay_mult", "decay_mult")):
            if spec.HasField(field):
                value = float(getattr(spec, field))
                if has[lid] and value != values[lid]:
                    raise NetError("shared param %r has mismatched %s (%g in layer %r, %g before)"
                                   % (name, what, value, lp.name, values[lid]))
                has[lid] = True
                values[lid] = value

    def _decide_backward(self):
        """Caffe's backward sweep: drop backward where nothing reaches a loss or all bottoms skip it."""
        under_loss, skip_backprop = set(), set()
        for layer_id in range(len(self.layers) - 1, -1, -1):
            contributes, skip = False, True
            for top_id, blob_id in enumerate(self._top_ids[layer_id]):
                name = self._blob_names[blob_id]
                if self._top_loss_weights[layer_id][top_id] or name in under_loss:
                    contributes = True
                if name not in skip_backprop:
                    skip = False
                if contributes and not skip:
                    break
            if self.layer_need_backward[layer_id] and skip:
                self.layer_need_backward[layer_id] = False
                self.bottom_need_backward[layer_id] = [False] * len(self._bottom_ids[layer_id])
            if not contributes:
                self.layer_need_backward[layer_id] = False
            log.info("%s %s backward computation.", self.layer_names[layer_id],
                     "needs" if self.layer_need_backward[layer_id] else "does not need")
            for bottom_id, blob_id in enumerate(self._bottom_ids[layer_id]):
                if contributes:
                    under_loss.add(self._blob_names[blob_id])
                else:
                    self.bottom_need_backward[layer_id][bottom_id] = False
                if not self.bottom_need_backward[layer_id][bottom_id]:
                    skip_backprop.add(self._blob_names[blob_id])

    def _force_backward(self):
        for layer_id, layer in enumerate(self.layers):
            self.layer_need_backward[layer_id] = True
            for bottom_id, blob_id in enumerate(self._bottom_ids[layer_id]):
                need = self.bottom_need_backward[layer_id][bottom_id] or \
                    bool(layer.allow_force_backward(bottom_id))
                self.bottom_need_backward[layer_id][bottom_id] = need
                self._blob_need_backward[blob_id] = self._blob_need_backward[blob_id] or need
            layer.param_propagate_down = [True] * len(layer.blobs)

    def _share_weights(self):
        for i, owner in enumerate(self._param_owners):
            if owner >= 0:
                self._params[i].share_data(self._params[owner])
                self._params[i].share_diff(self._params[owner])

    def _build_views(self):
        """The pycaffe-style dictionaries (fixed once the net is built)."""
        self.blobs = OrderedDict()
        for name, blob in zip(self._blob_names, self._blobs):
            self.blobs.setdefault(name, blob)
        self.layer_dict = OrderedDict(zip(self.layer_names, self.layers))
        self._layer_index = {}
        for i, name in enumerate(self.layer_names):
            if name in self._layer_index:
                log.warning("two layers are named %r; lookups by name find the first", name)
            self._layer_index.setdefault(name, i)
        self.params = OrderedDict((name, layer.blobs) for name, layer in zip(self.layer_names, self.layers)
                                  if len(layer.blobs) > 0)
        self.bottom_names = OrderedDict((name, [self._blob_names[b] for b in ids])
                                        for name, ids in zip(self.layer_names, self._bottom_ids))
        self.top_names = OrderedDict((name, [self._blob_names[b] for b in ids])
                                     for name, ids in zip(self.layer_names, self._top_ids))
        self.inputs = [self._blob_names[i] for i in self._input_ids]
        self.outputs = [self._blob_names[i] for i in self._output_ids]
        self.blob_loss_weights = OrderedDict((name, self._blob_loss.get(i, 0.0))
                                             for i, name in enumerate(self._blob_names))
        self.param_names = list(self._param_display_names)
        self.blob_need_backward = OrderedDict(zip(self._blob_names, self._blob_need_backward))

    # -- pycaffe-style names ------------------------------------------------
    @property
    def _layer_names(self):
        return self.layer_names

    @property
    def _inputs(self):
        return list(self._input_ids)

    @property
    def _outputs(self):
        return list(self._output_ids)

    def has_blob(self, name):
        return name in self.blobs

    def has_layer(self, name):
        return name in self._layer_index

    def blob_by_name(self, name):
        if name not in self.blobs:
            raise NetError("net %r has no blob %r; blobs: %s" % (self.name, name, ", ".join(self.blobs)))
        return self.blobs[name]

    def layer_by_name(self, name):
        return self.layers[self._index_of_layer(name)]

    def _index_of_layer(self, name):
        if name not in self._layer_index:
            raise NetError("net %r has no layer %r; layers: %s"
                           % (self.name, name, ", ".join(self.layer_names)))
        return self._layer_index[name]

    # -- forward and backward -------------------------------------------------
    def forward_from_to(self, start, end):
        """Run layers start..end (inclusive); return the weighted sum of their loss tops."""
        if not 0 <= start <= len(self.layers) - 1 or not end < len(self.layers):
            raise NetError("forward_from_to(%d, %d): layer indices must lie in [0, %d]"
                           % (start, end, len(self.layers) - 1))
        if self.debug_info:
            for blob_id in self._input_ids:
                blob = self._blobs[blob_id]
                log.info("    [Forward] Input %s data: %g", self._blob_names[blob_id],
                         _asum_mean(blob.xp, blob.data))
        loss = 0.0
        for i in range(start, end + 1):
            layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
            try:
                layer.reshape(bottom, top)   # as Caffe's Layer::Forward, follow input shapes
                layer.forward(bottom, top)
            except CaffeError:
                raise
            except Exception as e:
                raise LayerError("layer %r (type %s): forward failed: %s: %s"
                                 % (self.layer_names[i], layer.type, type(e).__name__, e)) from e
            for blob, weight in self._layer_loss[i]:
                loss += weight * float(blob.data.sum())
            if self.debug_info:
                self._forward_debug_info(i)
        return loss

    def backward_from_to(self, start, end):
        """Run layers start down to end (inclusive) backward, from the loss weights."""
        self._set_loss_diffs()
        self._backward_layers(start, end)

    _forward = forward_from_to       # pycaffe's private names
    _backward = backward_from_to

    def _set_loss_diffs(self):
        """Each loss top's diff holds its weight: that is where loss layers read it."""
        for losses in self._layer_loss:
            for blob, weight in losses:
                blob.diff[...] = weight

    def _backward_layers(self, start, end):
        if not 0 <= end or not start < len(self.layers):
            raise NetError("backward_from_to(%d, %d): layer indices must lie in [0, %d]"
                           % (start, end, len(self.layers) - 1))
        for i in range(start, end - 1, -1):
            if not self.layer_need_backward[i]:
                continue
            layer = self.layers[i]
            try:
                layer.backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
            except CaffeError:
                raise
            except Exception as e:
                raise LayerError("layer %r (type %s): backward failed: %s: %s"
                                 % (self.layer_names[i], layer.type, type(e).__name__, e)) from e
            if self.debug_info:
                self._backward_debug_info(i)
        if self.debug_info and start == len(self.layers) - 1 and end == 0:
            self._all_params_debug_info()

    def forward_backward(self):
        """One full forward and backward pass (the solver's step); return the loss."""
        last = len(self.layers) - 1
        loss = self.forward_from_to(0, last)
        self.backward_from_to(last, 0)
        return loss

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: set inputs from kwargs, run start..end, return blob data by name."""
        blobs = list(blobs or [])
        start_ind = self._index_of_layer(start) if start is not None else 0
        if end is not None:
            end_ind = self._index_of_layer(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        self._check_blob_names(outputs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise NetError("input blob arguments %s do not match the net's inputs %s"
                               % (sorted(kwargs), sorted(self.inputs)))
            for name, value in kwargs.items():
                self._write(name, value, "data")
        self.forward_from_to(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: set output diffs from kwargs, run start..end, return diffs by name."""
        diffs = list(diffs or [])
        start_ind = self._index_of_layer(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._index_of_layer(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        self._check_blob_names(outputs)
        self._set_loss_diffs()
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise NetError("top diff arguments %s do not match the net's outputs %s"
                               % (sorted(kwargs), sorted(self.outputs)))
            for name, value in kwargs.items():
                self._write(name, value, "diff")
        self._backward_layers(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def _check_blob_names(self, names):
        unknown = [n for n in names if n not in self.blobs]
        if unknown:
            raise NetError("net %r has no blob(s) %s; blobs: %s"
                           % (self.name, ", ".join(map(repr, sorted(unknown))), ", ".join(self.blobs)))

    def _write(self, name, value, field):
        blob = self.blobs[name]
        value = blob.xp.asarray(value)
        if value.shape[:1] != blob.shape[:1]:
            raise NetError("%s for blob %r is not batch sized: got shape %s, the blob has %s"
                           % (field, name, value.shape, blob.shape))
        if value.shape != blob.shape:
            raise NetError("%s for blob %r has shape %s but the blob has %s; reshape the blob "
                           "(net.blobs[%r].reshape(...), then net.reshape()) to feed another shape"
                           % (field, name, value.shape, blob.shape, name))
        getattr(blob, field)[...] = value

    def reshape(self):
        """Let every layer follow changed input shapes (Caffe's Net::Reshape)."""
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    # -- parameters ------------------------------------------------------------
    def clear_param_diffs(self):
        for blob in self.learnable_params:
            blob.diff[...] = 0

    def update(self):
        """data -= diff for every learnable parameter (the solver has scaled the diff)."""
        for blob in self.learnable_params:
            blob.data -= blob.diff

    def copy_from(self, source):
        """Load trained blobs by layer name from a .caffemodel (path or NetParameter) or .h5 file.

        Layers absent from the file keep their values; file layers absent from the
        net are ignored; a layer present in both must match blob for blob.
        """
        if not isinstance(source, caffe_pb2.NetParameter) and os.fspath(source).endswith(".h5"):
            return self._copy_from_hdf5(os.fspath(source))
        if not isinstance(source, caffe_pb2.NetParameter) and os.path.isfile(source):
            try:
                return self._copy_from_stream(os.fspath(source))
            except NotStreamable:
                pass   # parse the whole message instead (V1 files; damage reported in its words)
        param = read_weights(source)
        where = source if not isinstance(source, caffe_pb2.NetParameter) else "the weights NetParameter"
        for src in param.layer:
            if src.name not in self._layer_index:
                log.debug("Ignoring source layer %s", src.name)
                continue
            self._copy_layer_blobs(self.layer_by_name(src.name), src, where)

    def _copy_from_stream(self, path):
        """copy_from for a binary file read layer by layer (solvers/caffemodel.py): the peak
        memory is the net plus the largest layer, not plus two copies of the whole file."""
        for name, blobs in iter_layers(path):
            if name not in self._layer_index:
                log.debug("Ignoring source layer %s", name)
                continue
            target = self.layer_by_name(name).blobs
            if len(target) != len(blobs):
                raise NetError("layer %r: incompatible number of blobs, the net has %d but %s holds %d"
                               % (name, len(target), path, len(blobs)))
            for j, (blob, (meta, data, diff)) in enumerate(zip(target, blobs)):
                if not _shape_matches(blob.shape, meta) or data.size != blob.count:
                    raise NetError("layer %r blob %d: shape mismatch, the net has %s but %s holds %s "
                                   "(%d values); was the file made for another net definition?"
                                   % (name, j, blob.shape, path, _proto_shape(meta), data.size))
                blob.data[...] = blob.xp.asarray(data.reshape(blob.shape))
                if diff is not None and diff.size:
                    if diff.size != blob.count:
                        raise NetError("layer %r blob %d: %s holds %d diff values for a blob of shape %s"
                                       % (name, j, path, diff.size, blob.shape))
                    blob.diff[...] = blob.xp.asarray(diff.reshape(blob.shape))

    def _copy_layer_blobs(self, layer, src, where):
        target = layer.blobs
        if len(target) != len(src.blobs):
            raise NetError("layer %r: incompatible number of blobs, the net has %d but %s holds %d"
                           % (src.name, len(target), where, len(src.blobs)))
        for j, (blob, proto) in enumerate(zip(target, src.blobs)):
            if not _shape_matches(blob.shape, proto):
                raise NetError("layer %r blob %d: shape mismatch, the net has %s but %s holds %s; "
                               "was the file made for another net definition?"
                               % (src.name, j, blob.shape, where, _proto_shape(proto)))
            blob.from_proto(proto, reshape=False, name="layer %r blob %d" % (src.name, j))

    def _copy_from_hdf5(self, path):
        from solvers.snapshot import read_net_hdf5
        _require_weights_file(path)
        wanted = {name: [b.shape for b in layer.blobs] for name, layer in zip(self.layer_names, self.layers)}
        for name, arrays in read_net_hdf5(path, wanted).items():
            layer_id = self._layer_index[name]
            for j, blob in enumerate(self.layers[layer_id].blobs):
                if j not in arrays:
                    if self._param_owners[self._param_ids[layer_id][j]] != -1:
                        continue   # shared from another layer: fine to be missing
                    raise NetError("layer %r: %s lacks blob %d" % (name, path, j))
                blob.data[...] = blob.xp.asarray(arrays[j])

    def share_with(self, other):
        """Share the data of ``other``'s trained layers by name (Caffe's ShareTrainedLayersWith).

        Layers that can (convolutions) also share their work memory with their
        namesakes: the two nets run at different times (a solver's train and
        test nets), so one set of column buffers serves both.
        """
        for name, source in zip(other.layer_names, other.layers):
            if name not in self._layer_index:
                continue
            layer = self.layer_by_name(name)
            if hasattr(layer, "share_work_memory"):
                layer.share_work_memory(source)
            target = layer.blobs
            if len(target) != len(source.blobs):
                raise NetError("share_with: layer %r has %d blobs here but %d in net %r"
                               % (name, len(target), len(source.blobs), other.name))
            for j, (mine, theirs) in enumerate(zip(target, source.blobs)):
                if mine.shape != theirs.shape:
                    raise NetError("share_with: layer %r blob %d has shape %s here but %s in net %r"
                                   % (name, j, mine.shape, theirs.shape, other.name))
                mine.share_data(theirs)

    # -- saving -------------------------------------------------------------------
    def to_proto(self, write_diff=False):
        """The net as a NetParameter with its blobs (Caffe's Net::ToProto)."""
        param = caffe_pb2.NetParameter()
        param.name = self.name
        for layer in self.layers:
            lp = param.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for blob in layer.blobs:
                lp.blobs.add().CopyFrom(blob.to_proto(write_diff))
        return param

    def save(self, path, write_diff=False):
        """Write a binary .caffemodel Caffe can read; the old file stays intact until done."""
        atomic_write_bytes(os.fspath(path), lambda: self.to_proto(write_diff).SerializeToString())

    # -- debug_info -----------------------------------------------------------------
    def _forward_debug_info(self, i):
        for blob, blob_id in zip(self.top_vecs[i], self._top_ids[i]):
            log.info("    [Forward] Layer %s, top blob %s data: %g", self.layer_names[i],
                     self._blob_names[blob_id], _asum_mean(blob.xp, blob.data))
        for j, blob in enumerate(self.layers[i].blobs):
            log.info("    [Forward] Layer %s, param blob %s data: %g", self.layer_names[i],
                     self._param_display_names[self._param_ids[i][j]], _asum_mean(blob.xp, blob.data))

    def _backward_debug_info(self, i):
        for k, (blob, blob_id) in enumerate(zip(self.bottom_vecs[i], self._bottom_ids[i])):
            if self.bottom_need_backward[i][k]:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %g", self.layer_names[i],
                         self._blob_names[blob_id], _asum_mean(blob.xp, blob.diff))
        layer = self.layers[i]
        for j, blob in enumerate(layer.blobs):
            if layer.param_propagate_down[j]:
                log.info("    [Backward] Layer %s, param blob %d diff: %g", self.layer_names[i], j,
                         _asum_mean(blob.xp, blob.diff))

    def _all_params_debug_info(self):
        asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
        for blob, owner in zip(self._params, self._param_owners):
            if owner >= 0:
                continue
            xp = blob.xp
            asum_data += float(xp.abs(blob.data).sum())
            asum_diff += float(xp.abs(blob.diff).sum())
            sumsq_data += float((blob.data * blob.data).sum())
            sumsq_diff += float((blob.diff * blob.diff).sum())
        log.info("    [Backward] All net params (data, diff): L1 norm = (%g, %g); L2 norm = (%g, %g)",
                 asum_data, asum_diff, sumsq_data ** 0.5, sumsq_diff ** 0.5)

    def __repr__(self):
        return "<Net %r phase=%s: %d layers, %d blobs>" % (
            self.name, caffe_pb2.Phase.Name(self.phase), len(self.layers), len(self._blobs))
