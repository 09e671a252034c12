"""``caffe.draw``: a NetParameter as a graph (layers as boxes, blobs as octagons).

The graph is written in Graphviz's DOT language here, with Caffe's look:
convolutions red, pooling orange, inner products purple, other layers blue,
in-place layers green, edges from Data/Convolution/InnerProduct labelled with
the batch size or ``num_output``. Rendering to PNG/SVG/PDF needs Graphviz:
through pydot when installed, else the ``dot`` program. Without either,
``draw_net_to_file`` writes the DOT text next to the requested file
(``net.png`` -> ``net.dot``) and says so; ``dot -Tpng net.dot -o net.png``
renders it anywhere Graphviz exists.
"""
import os
import shutil
import subprocess
import warnings

from netspec import caffe_pb2
from netspec.errors import CaffeError

LAYER_STYLE = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
               "InnerProduct": "#CC33FF"}
TEXT_FORMATS = ("dot", "gv", "raw")


class GraphvizMissing(CaffeError):
    """Neither pydot nor Graphviz's ``dot`` program is available to render an image."""


def get_pooling_types_dict():
    """{enum value: name} of PoolingParameter.PoolMethod (MAX, AVE, STOCHASTIC)."""
    enum = caffe_pb2.PoolingParameter.PoolMethod
    return {enum.Value(name): name for name in enum.keys()}


def _first(values, default):
    return int(values[0]) if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """Name, type and, for convolution and pooling, kernel/stride/pad; one per line (LR) or spaced (TB)."""
    sep = " " if rankdir in ("TB", "BT") else "\n"
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = p.kernel_h if p.HasField("kernel_h") else _first(p.kernel_size, 1)
        stride = p.stride_h if p.HasField("stride_h") else _first(p.stride, 1)
        pad = p.pad_h if p.HasField("pad_h") else _first(p.pad, 0)
        parts = [layer.name, "(%s)" % layer.type, "kernel size: %d" % kernel, "stride: %d" % stride,
                 "pad: %d" % pad]
    elif layer.type == "Pooling":
        p = layer.pooling_param
        pool = get_pooling_types_dict()[p.pool]
        kernel = p.kernel_h if p.HasField("kernel_h") else p.kernel_size
        stride = p.stride_h if p.HasField("stride_h") else p.stride
        pad = p.pad_h if p.HasField("pad_h") else p.pad
        parts = [layer.name, "(%s %s)" % (pool, layer.type), "kernel size: %d" % kernel,
                 "stride: %d" % stride, "pad: %d" % pad]
    else:
        parts = [layer.name, "(%s)" % layer.type]
    if display_lrm and len(layer.param):
        parts.append("lr mult: " + ", ".join("%g" % ps.lr_mult for ps in layer.param))
    return sep.join(parts)


def get_edge_label(layer):
    """What travels on a layer's output edges: batch size for Data, num_output for conv/fc."""
    if layer.type == "Data":
        return "Batch %d" % layer.data_param.batch_size
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def choose_color_by_layertype(layertype):
    return TYPE_COLORS.get(layertype, LAYER_STYLE["fillcolor"])


def _in_phase(layer, phase):
    """Caffe's draw filter: include rules name phases to keep, exclude rules phases to drop."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise CaffeError("layer %r has both include and exclude rules; Caffe allows one kind only"
                         % layer.name)
    keep = not len(layer.include) or any(r.phase == phase for r in layer.include if r.HasField("phase")) \
        or any(not r.HasField("phase") for r in layer.include)
    return keep and not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)


def _quote(text):
    """A DOT double-quoted string; record-shape metacharacters escaped so labels stay literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    for ch in "{}|<>":
        out = out.replace(ch, "\\" + ch)
    return '"%s"' % out.replace("\n", "\\n")


def _attrs(d):
    return ", ".join("%s=%s" % (k, _quote(str(v))) for k, v in d.items())


def _phase_value(phase):
    if phase is None or phase == "ALL":
        return None
    if isinstance(phase, str):
        return caffe_pb2.Phase.Value(phase.upper())
    return int(phase)


def to_dot(caffe_net, rankdir="LR", label_edges=True, phase=None, display_lrm=False):
    """The net as DOT text (a digraph named after the net)."""
    if not isinstance(caffe_net, caffe_pb2.NetParameter):
        raise CaffeError("draw: expected a caffe_pb2.NetParameter, got %s (read a prototxt with "
                         "netspec.io.read_net first)" % type(caffe_net).__name__)
    phase = _phase_value(phase)
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if not _in_phase(layer, phase):
            continue
        node = "%s_%s" % (layer.name, layer.type)
        inplace = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE) if inplace else dict(LAYER_STYLE, fillcolor=choose_color_by_layertype(layer.type))
        nodes[node] = dict(style, label=get_layer_label(layer, rankdir, display_lrm))
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = dict(BLOB_STYLE, label=bottom)
            edges.append((bottom + "_blob", node, None))
        label = get_edge_label(layer) if label_edges else None
        for top in layer.top:
            nodes.setdefault(top + "_blob", dict(BLOB_STYLE, label=top))
            edges.append((node, top + "_blob", label))
    lines = ["digraph %s {" % _quote(caffe_net.name or "Net"), "  rankdir=%s;" % _quote(rankdir)]
    lines += ["  %s [%s];" % (_quote(name), _attrs(attrs)) for name, attrs in nodes.items()]
    for src, dst, label in edges:
        extra = " [label=%s]" % _quote(label) if label else ""
        lines.append("  %s -> %s%s;" % (_quote(src), _quote(dst), extra))
    lines.append("}")
    return "\n".join(lines) + "\n"


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The graph as a ``pydot.Dot`` (needs pydot)."""
    try:
        import pydot
    except ImportError:
        raise GraphvizMissing("get_pydot_graph needs pydot (pip install pydot) and Graphviz") from None
    return pydot.graph_from_dot_data(to_dot(caffe_net, rankdir, label_edges, phase, display_lrm))[0]


def _render(dot_text, ext):
    """Image bytes from DOT text, through pydot or the ``dot`` program."""
    try:
        import pydot
    except ImportError:
        pydot = None
    if pydot is not None:
        try:
            return pydot.graph_from_dot_data(dot_text)[0].create(format=ext)
        except (OSError, FileNotFoundError) as e:   # pydot present, Graphviz's programs missing
            if shutil.which("dot") is None:
                raise GraphvizMissing("pydot cannot run Graphviz (%s); install Graphviz "
                                      "(apt-get install graphviz)" % e) from None
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("rendering a %s image needs Graphviz: install pydot and Graphviz "
                              "(pip install pydot; apt-get install graphviz), or draw to a .dot file"
                              % ext.upper())
    run = subprocess.run([exe, "-T" + ext], input=dot_text.encode(), capture_output=True)
    if run.returncode != 0:
        raise CaffeError("Graphviz's dot failed (-T%s): %s" % (ext, run.stderr.decode(errors="replace").strip()))
    return run.stdout


def draw_net(caffe_net, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """The drawing as bytes in format ``ext`` ('png', 'svg', 'pdf', ...; 'dot' gives the DOT text)."""
    text = to_dot(caffe_net, rankdir, True, phase, display_lrm)
    if ext in TEXT_FORMATS:
        return text.encode()
    return _render(text, ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw into ``filename`` (format from its extension); return the path actually written.

    Without Graphviz an image cannot be made: the DOT text goes to the same
    name with a ``.dot`` extension instead, a warning says so, and that path is
    returned.
    """
    filename = os.fspath(filename)
    root, ext = os.path.splitext(filename)
    ext = ext.lstrip(".").lower() or "png"
    try:
        data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    except GraphvizMissing as e:
        filename = root + ".dot"
        data = to_dot(caffe_net, rankdir, True, phase, display_lrm).encode()
        warnings.warn("%s; wrote the graph as DOT text to %s instead (render it with: dot -T%s %s -o %s%s)"
                      % (e, filename, ext, filename, root, "." + ext), RuntimeWarning, stacklevel=2)
    from netspec.io import atomic_write_bytes
    atomic_write_bytes(filename, data)
    return filename
