"""NetSpec: write Caffe nets in Python, as pycaffe's ``caffe.net_spec`` does.

``L.<Type>(*bottoms, **kwargs)`` describes one layer and returns its top(s);
assigning tops to a ``NetSpec`` names them; ``to_proto`` walks the graph
from the requested tops and emits a ``caffe_pb2.NetParameter`` whose layer
order, names and fields are those pycaffe would print, so a program written
for pycaffe gives the same prototxt here.

Keyword routing (per keyword): a field of ``LayerParameter`` (``name``,
``param``, ``include``, ``loss_weight``, ``transform_param``, any
``*_param`` ...) goes there; anything else goes into the layer's own
``*_param`` message, found by pycaffe's rule (the ``LayerParameter`` field
whose message is called ``<Type>Parameter``). The schema has no field name
common to both, so this agrees with pycaffe, which tries the own message
first. Values: scalars, lists for repeated fields (a lone scalar becomes a
one-element list), dicts for messages, lists of dicts for repeated messages,
enum values as numbers (``P.Pooling.MAX``) or names (``'MAX'``).

Beyond pycaffe, mistakes are caught when the layer is written, not when
Caffe later refuses the file: unknown keywords and layer types raise
``NetSpecError`` with the closest valid names (an unknown type is an
``UnknownLayerTypeError``, an AttributeError too; a bottom that is not a
Top, such as a multi-top layer's tuple, a ``NotATopError``, a TypeError
too, as pycaffe raises); two layers writing one top
blob raise; unconsumed inputs warn (see ``check_net``).
"""
import difflib
import numbers
import warnings
from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from netspec import caffe_pb2
from netspec.descriptor_compat import is_repeated
from netspec.errors import NetSpecError, NotATopError, UnknownLayerTypeError

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

# Caffe's own layer types (BVLC master), i.e. the modern spellings of every
# V1 LayerType plus the types added since. Layers registered in
# solvers.layer.LAYER_REGISTRY and add_layer_type() extend this list.
STANDARD_LAYER_TYPES = frozenset("""
    AbsVal Accuracy ArgMax BatchNorm BatchReindex Bias BNLL Clip Concat
    ContrastiveLoss Convolution Crop Data Deconvolution Dropout DummyData
    Eltwise ELU Embed EuclideanLoss Exp Filter Flatten HDF5Data HDF5Output
    HingeLoss Im2col ImageData InfogainLoss InnerProduct Input Log LRN LSTM
    LSTMUnit MemoryData MultinomialLogisticLoss MVN Parameter Pooling Power
    PReLU Python Recurrent Reduction ReLU Reshape RNN Scale Sigmoid
    SigmoidCrossEntropyLoss Silence Slice Softmax SoftmaxWithLoss Split SPP
    Swish TanH Threshold Tile WindowData
""".split())

# Types whose C++ layer reads a message named after another type.
_SHARED_PARAM = {
    "Deconvolution": "Convolution",
    "Im2col": "Convolution",
    "SoftmaxWithLoss": "Softmax",
    "RNN": "Recurrent",
    "LSTM": "Recurrent",
}

_LAYER_FIELDS = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
_extra_types = set()


class NetSpecWarning(UserWarning):
    """A net that Caffe accepts but that is probably not what was meant."""


class _NameError(NetSpecError, AttributeError):
    """An unknown attribute name: a NetSpecError that hasattr() still understands."""


def param_name_dict():
    """Layer type -> the LayerParameter field holding its parameters.

    pycaffe's rule, read from the schema: the field whose message type is
    ``<Type>Parameter``; plus the few types that share another's message.
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        msg = field.message_type
        if field.name.endswith("_param") and msg is not None and msg.name.endswith("Parameter"):
            names[msg.name[:-len("Parameter")]] = field.name
    for layer_type, owner in _SHARED_PARAM.items():
        if owner in names:
            names.setdefault(layer_type, names[owner])
    return names


_param_names = param_name_dict()


def add_layer_type(type_name):
    """Declare a layer type that is neither Caffe's nor registered (e.g. a fork's)."""
    _extra_types.add(type_name)


def known_layer_types():
    """Caffe's standard types, the registered back-end layers and add_layer_type()'s."""
    known = set(STANDARD_LAYER_TYPES) | _extra_types
    try:
        import solvers.layers  # noqa: F401  (importing fills the registry)
        from solvers.layer import LAYER_REGISTRY
        known |= set(LAYER_REGISTRY)
    except Exception:  # the back end is optional for writing nets
        pass
    return known


def _suggest(word, candidates, n=3):
    """' Did you mean ...?': a match ignoring case first ('convolution' -> 'Convolution'), then the nearest."""
    same = [c for c in sorted(candidates) if c.lower() == word.lower() and c != word]
    near = same + [c for c in difflib.get_close_matches(word, sorted(candidates), n=n, cutoff=0.6)
                   if c not in same]
    near = near[:n]
    return (" Did you mean %s?" % " or ".join(repr(c) for c in near)) if near else ""


def closest_fields(key, type_name):
    """The valid names nearest a misspelt layer field ``key``: LayerParameter's and the type's own *_param's.

    NetSpec's unknown-keyword error and the prototxt reader's both use it.
    """
    valid = set(_LAYER_FIELDS) - {"type"}
    own = _param_names.get(type_name)
    if own is not None:
        valid |= set(getattr(caffe_pb2.LayerParameter(), own).DESCRIPTOR.fields_by_name)
    return difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)


def params_holding(key):
    """The *_param fields of LayerParameter whose message has a field named ``key``."""
    return [f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields
            if f.message_type is not None and f.name.endswith("_param")
            and key in f.message_type.fields_by_name]


# -- assigning Python values to protobuf messages ------------------------------

def _enum_value(field, value, where):
    """An enum given by name ('MAX') or by number (P.Pooling.MAX)."""
    enum = field.enum_type
    if isinstance(value, str):
        if value not in enum.values_by_name:
            raise NetSpecError("%s: %r is not a value of %s (one of %s).%s"
                               % (where, value, enum.name, ", ".join(enum.values_by_name),
                                  _suggest(value, enum.values_by_name)))
        return enum.values_by_name[value].number
    if isinstance(value, bool) or not isinstance(value, int) or value not in enum.values_by_number:
        raise NetSpecError("%s: %r is not a value of %s (one of %s)"
                           % (where, value, enum.name, ", ".join(enum.values_by_name)))
    return value


def _plain(value):
    """NumPy arrays and scalars as Python lists and numbers."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, Message) else value


def _scalar(field, value, where):
    value = _plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_value(field, value, where)
    return value


def _fill_message(target, value, where):
    if isinstance(value, Message):
        if value.DESCRIPTOR is not target.DESCRIPTOR:
            raise NetSpecError("%s expects a %s, got a %s"
                               % (where, target.DESCRIPTOR.name, value.DESCRIPTOR.name))
        target.CopyFrom(value)
    elif isinstance(value, dict):
        assign_fields(target, value, where)
    else:
        raise NetSpecError("%s is a %s message: give a dict of its fields, got %r"
                           % (where, target.DESCRIPTOR.name, value))


def assign_field(message, name, value, where):
    """Set ``message.<name>`` from a Python value, as pycaffe's assign_proto does.

    ``where`` names the place for error messages, e.g. "Convolution layer: weight_filler".
    """
    field = message.DESCRIPTOR.fields_by_name.get(name)
    here = "%s.%s" % (where, name) if where else name
    if field is None:
        raise NetSpecError("%s: %s has no field %r.%s Fields: %s"
                           % (where, message.DESCRIPTOR.name, name,
                              _suggest(name, message.DESCRIPTOR.fields_by_name),
                              ", ".join(message.DESCRIPTOR.fields_by_name)))
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    value = _plain(value)
    try:
        if is_repeated(field):
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            container = getattr(message, name)
            for item in items:
                if is_message:
                    _fill_message(container.add(), item, here)
                else:
                    container.append(_scalar(field, item, here))
        elif isinstance(value, (list, tuple)):
            raise NetSpecError("%s takes one value, not a list: %r" % (here, value))
        elif is_message:
            _fill_message(getattr(message, name), value, here)
        else:
            setattr(message, name, _scalar(field, value, here))
    except (TypeError, ValueError) as e:
        raise NetSpecError("%s: cannot store %r in this %s field (%s)"
                           % (here, value, _type_name(field), e)) from None


def assign_fields(message, fields, where=""):
    """Assign each ``name: value`` of a dict to ``message`` (see assign_field)."""
    for name, value in fields.items():
        assign_field(message, name, value, where)


def _type_name(field):
    names = {v: k[len("TYPE_"):].lower() for k, v in vars(FieldDescriptor).items()
             if k.startswith("TYPE_") and isinstance(v, int)}
    return names.get(field.type, "?")


# -- the graph: Top and Function -----------------------------------------------

class Top:
    """One output blob of a layer (pycaffe's Top): ``fn`` made it, ``n`` is its index."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params):
        self.fn._update(params)

    def __repr__(self):
        return "<Top %d of %s>" % (self.n, self.fn)


class Function:
    """One layer: its type, its input Tops and its keyword parameters (pycaffe's Function)."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        params = dict(params)
        self.ntop = params.pop("ntop", 1)
        self.in_place = params.pop("in_place", False)
        if not isinstance(self.ntop, numbers.Integral) or isinstance(self.ntop, bool) or self.ntop < 0:
            raise NetSpecError("%s layer: ntop must be a count >= 0, got %r" % (type_name, self.ntop))
        self.ntop = int(self.ntop)
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                hint = ""
                if isinstance(inp, tuple):
                    hint = (" A layer with ntop > 1 returns a tuple of tops: unpack it (a, b = "
                            "L.Slice(..., ntop=2)) or pass them one by one (L.%s(*tops, ...))." % type_name)
                elif isinstance(inp, Function):
                    hint = " A layer with ntop=0 has no top to consume."
                raise NotATopError("%s layer: bottom %d is not a Top (type is %s).%s"
                                   % (type_name, i, type(inp), hint))
        self.inputs = tuple(inputs)
        self.params = params
        self._layer_fields()  # validate now, so the error points at the user's line
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params):
        merged = dict(self.params)
        merged.update(params)
        old, self.params = self.params, merged
        try:
            self._layer_fields()
        except NetSpecError:
            self.params = old
            raise

    def _layer_fields(self):
        """The keyword parameters as a LayerParameter (name/type/bottom/top aside)."""
        layer = caffe_pb2.LayerParameter()
        own = _param_names.get(self.type_name)
        where = "%s layer" % self.type_name
        for key, value in self.params.items():
            if key == "type":
                raise NetSpecError("%s: keyword 'type' is not allowed; the type comes from L.%s"
                                   % (where, self.type_name))
            if key in _LAYER_FIELDS:
                assign_field(layer, key, value, where)
            elif own is not None and key in getattr(layer, own).DESCRIPTOR.fields_by_name:
                assign_field(getattr(layer, own), key, value, "%s: %s" % (where, own))
            else:
                raise NetSpecError(self._unknown_keyword(key, own))
        return layer

    def _unknown_keyword(self, key, own):
        near = closest_fields(key, self.type_name)
        msg = "%s layer: unknown keyword %r." % (self.type_name, key)
        if near:
            msg += " Closest valid fields: %s." % ", ".join(near)
        elsewhere = params_holding(key)
        if elsewhere:
            msg += " %r is a field of %s: pass it as %s=dict(%s=...)." % (
                key, " and ".join(elsewhere), elsewhere[0], key)
        msg += " Keywords go to LayerParameter%s." % (" or to %s" % own if own else
                                                      " (type %s has no own *_param)" % self.type_name)
        return msg

    def _make_layer(self, names, autonames, layers):
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(layers[inp.fn].top[inp.n] for inp in self.inputs)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        layer.MergeFrom(self._layer_fields())
        return layer

    def _name(self, names, autonames):
        """The layer is named after its first top; a top-less layer gets <Type><k>."""
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = "%s%d" % (self.type_name, autonames[self.type_name])
        return names[self]

    def _top_name(self, top, names, autonames):
        """A NetSpec name if it has one, else <Type><k>, k counting per type."""
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = "%s%d" % (top.fn.type_name, autonames[top.fn.type_name])
        return names[top]

    def __repr__(self):
        return "<%s layer>" % self.type_name


def _graph_to_proto(roots, names):
    """Emit the layers needed for ``roots`` (Functions), inputs first, as pycaffe orders them."""
    layers = OrderedDict()
    autonames = Counter()
    for root in roots:
        stack = [(root, False)]
        while stack:  # post-order walk without recursion (deep nets)
            fn, inputs_done = stack.pop()
            if fn in layers:
                continue
            if inputs_done:
                layers[fn] = fn._make_layer(names, autonames, layers)
            else:
                stack.append((fn, True))
                stack.extend((inp.fn, False) for inp in reversed(fn.inputs))
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    check_net(net)
    return net


def to_proto(*tops):
    """A NetParameter with all layers needed to compute the given tops (auto-named)."""
    roots = []
    for top in tops:
        if isinstance(top, Top):
            roots.append(top.fn)
        elif isinstance(top, Function):
            roots.append(top)
        else:
            raise NetSpecError("to_proto takes tops made by L.<Type>(...), got %s" % type(top).__name__)
    return _graph_to_proto(roots, {})


# -- spec-time checks ----------------------------------------------------------

def _phases(layer):
    """The phases in which a layer may be part of the net (by phase/include/exclude)."""
    both = {TRAIN, TEST}
    if layer.HasField("phase"):
        phases = {layer.phase}
    elif layer.include:
        phases = set()
        for rule in layer.include:
            phases |= {rule.phase} if rule.HasField("phase") else both
    else:
        phases = set(both)
    for rule in layer.exclude:
        if rule.HasField("phase") and len(rule.ListFields()) == 1:
            phases.discard(rule.phase)
    return phases


def check_net(net):
    """Checks Caffe would only make at run time, done when the net is written.

    * A top blob written by two layers (neither in place) that can run in the
      same phase is a NetSpecError naming both layers.
    * An "input" nothing consumes gets a NetSpecWarning. Inputs are the tops
      of layers that take no bottoms (Input, Data, DummyData, ImageData,
      HDF5Data, MemoryData, WindowData, Parameter, a Python data layer):
      such a top that is no layer's bottom is loaded but unused, usually a
      forgotten label. Outputs of other layers are the net's results, so
      they are not reported.
    """
    producers = {}
    for layer in net.layer:
        for i, top in enumerate(layer.top):
            if i < len(layer.bottom) and layer.bottom[i] == top:
                continue  # in place (Caffe's rule: top i is bottom i): rewrites the blob it reads
            for other in producers.get(top, []):
                if _phases(other) & _phases(layer):
                    raise NetSpecError(
                        "top blob %r is written by two layers: %r (type %s) and %r (type %s). "
                        "Give one of them another top name (or use in_place=True to rewrite it)."
                        % (top, other.name, other.type, layer.name, layer.type))
            producers.setdefault(top, []).append(layer)
    consumed = {b for layer in net.layer for b in layer.bottom}
    unused = ["%r (layer %r, type %s)" % (top, layer.name, layer.type)
              for layer in net.layer if not layer.bottom
              for top in layer.top if top not in consumed]
    if unused:
        warnings.warn("input(s) that no layer consumes: %s" % ", ".join(unused),
                      NetSpecWarning, stacklevel=4)


# -- the user-facing objects ---------------------------------------------------

class NetSpec:
    """Named tops: ``n.conv1 = L.Convolution(n.data, ...)`` names both layer and top
    ``conv1``; ``n.to_proto()`` emits every layer needed for the assigned tops."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        if not isinstance(value, (Top, Function)):
            hint = ""
            if isinstance(value, tuple):
                hint = " A layer with ntop > 1 returns a tuple: unpack it, e.g. n.a, n.b = L.Slice(..., ntop=2)."
            raise NotATopError("NetSpec.%s: can only hold tops made by L.<Type>(...), got %s.%s"
                               % (name, type(value).__name__, hint))
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__") or name == "tops":
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise _NameError("NetSpec has no top %r.%s Tops: %s"
                             % (name, _suggest(name, self.tops), ", ".join(self.tops))) from None

    def __setitem__(self, name, value):
        self.__setattr__(name, value)

    def __getitem__(self, name):
        return self.__getattr__(name)

    def __delitem__(self, name):
        del self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Add or change keyword parameters of the layer that made top ``name``."""
        self.tops[name]._update(params)

    def to_proto(self):
        names = {value: name for name, value in self.tops.items()}
        roots = [v.fn if isinstance(v, Top) else v for v in self.tops.values()]
        return _graph_to_proto(roots, names)


class Layers:
    """``L.<Type>(*bottoms, **kwargs)``: one layer; returns its top, a tuple of tops
    (ntop > 1) or the layer itself (ntop=0)."""

    def __getattr__(self, type_name):
        if type_name.startswith("_"):
            raise AttributeError(type_name)
        if type_name not in STANDARD_LAYER_TYPES and type_name not in _extra_types:
            known = known_layer_types()
            if type_name not in known:
                raise UnknownLayerTypeError(
                    "unknown layer type %r.%s (Known: %s. A type of your own: register it in "
                    "solvers.layer or call netspec.net_spec.add_layer_type.)"
                    % (type_name, _suggest(type_name, known), ", ".join(sorted(known))))

        def layer_fn(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = type_name
        return layer_fn

    def __dir__(self):
        return sorted(known_layer_types())


class _EnumValues:
    """``P.<Type>.<VALUE>``: the constants of ``caffe_pb2.<Type>Parameter``."""

    def __init__(self, type_name, message):
        self._type_name = type_name
        self._message = message

    def __getattr__(self, value_name):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        try:
            return getattr(self._message, value_name)
        except AttributeError:
            values = [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]
            raise _NameError("P.%s has no value %r.%s Values: %s"
                             % (self._type_name, value_name, _suggest(value_name, values),
                                ", ".join(values) or "none")) from None

    def __dir__(self):
        return [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]


class Parameters:
    """``P.Pooling.MAX``, ``P.Data.LMDB``, ``P.Eltwise.SUM``, ``P.Loss.VALID`` ..."""

    def __getattr__(self, type_name):
        if type_name.startswith("_"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, type_name + "Parameter", None)
        if message is None:
            stems = [n[:-len("Parameter")] for n in caffe_pb2.DESCRIPTOR.message_types_by_name
                     if n.endswith("Parameter")]
            raise _NameError("P.%s: the schema has no message %sParameter.%s"
                             % (type_name, type_name, _suggest(type_name, stems)))
        return _EnumValues(type_name, message)


layers = Layers()
params = Parameters()
