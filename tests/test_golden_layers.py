"""Every layer case BVLC Caffe computed for us, replayed through our layers.

Each entry of ``golden/layers/cases.json`` is one test (id = case name, so
``-k conv`` picks the convolution cases). A case is a prototxt with source
layers ``b0, b1, ..`` feeding one layer named ``layer``, and an npz holding
what Caffe computed: ``bottom_i``, ``param_j``, ``top_k``,
``param_after_forward_j``, ``top_diff_k``, ``bottom_diff_i``,
``param_diff_j``. A layer type that is not registered yet fails: it is work
still to do, not something to skip.
"""
import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
LAYERS_DIR = GOLDEN / "layers"

if not (LAYERS_DIR / "cases.json").is_file():
    pytest.skip("golden data from BVLC Caffe not found at %s (it lives beside the checkout in "
                "../shared/golden); nothing to compare against" % LAYERS_DIR,
                allow_module_level=True)

CASES = json.loads((LAYERS_DIR / "cases.json").read_text())

RTOL, ATOL = 1e-4, 1e-5


def _load_case(name):
    from google.protobuf import text_format
    from netspec import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Merge((LAYERS_DIR / (name + ".prototxt")).read_text(), net)
    by_name = {lp.name: lp for lp in net.layer}
    if "layer" not in by_name:
        raise AssertionError("case %s: no layer named 'layer' in its prototxt" % name)
    # Source layer bI has the single top bI; bottom_I in the npz is its value.
    srcs = [lp for lp in net.layer
            if lp.name != "layer" and lp.name.startswith("b") and lp.name[1:].isdigit()]
    sources = {lp.top[0]: int(lp.name[1:]) for lp in srcs}
    param_sources = {lp.top[0] for lp in srcs if lp.type == "Parameter"}
    return net, by_name["layer"], sources, param_sources


def _close(actual, expected, what):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, "%s: shape %s, Caffe has %s" % (what, actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_layer(case):
    from netspec import caffe_pb2
    from solvers.blob import Blob
    from solvers.layer import create_layer
    from solvers.backend import to_numpy

    name = case["name"]
    gold = np.load(LAYERS_DIR / (name + ".npz"))
    _, lp, sources, param_sources = _load_case(name)
    lp.phase = caffe_pb2.Phase.Value(case["phase"])

    # Bottoms: one Blob per source, holding Caffe's bottom_i.
    blobs = {}
    for top_name, i in sources.items():
        data = gold["bottom_%d" % i]
        b = Blob(data.shape)
        b.data[...] = b.xp.asarray(data)   # works with CuPy blobs too
        blobs[top_name] = b
    for bname in lp.bottom:
        assert bname in blobs, "case %s: bottom %r has no source layer" % (name, bname)
    bottom = [blobs[b] for b in lp.bottom]
    # Tops: new Blobs, or the bottom itself when the names agree (in-place).
    bottom_by_name = dict(zip(lp.bottom, bottom))
    top = [bottom_by_name[t] if t in bottom_by_name else Blob() for t in lp.top]

    layer = create_layer(lp)
    layer.setup(bottom, top)

    nparam = len([k for k in gold.files if k.startswith("param_") and k[6:].isdigit()])
    assert len(layer.blobs) == nparam, (
        "case %s: layer %s made %d parameter blob(s), Caffe has %d"
        % (name, lp.type, len(layer.blobs), nparam))
    for j in range(nparam):
        want = gold["param_%d" % j]
        assert tuple(layer.blobs[j].shape) == want.shape, (
            "case %s: parameter blob %d has shape %s, Caffe's is %s"
            % (name, j, tuple(layer.blobs[j].shape), want.shape))
        layer.blobs[j].data[...] = layer.blobs[j].xp.asarray(want)

    layer.forward(bottom, top)
    for k in range(len(top)):
        if "top_%d" % k in gold.files:
            _close(to_numpy(top[k].data), gold["top_%d" % k], "case %s: top_%d" % (name, k))
    for j in range(nparam):
        key = "param_after_forward_%d" % j
        if key in gold.files:
            _close(to_numpy(layer.blobs[j].data), gold[key], "case %s: %s" % (name, key))

    if not case["backward"]:
        return

    # Zero all parameter diffs, as Caffe's generator did between forward and
    # backward: the layer's own, and those of Parameter source layers, whose
    # top shares their blob (so the bottom's diff is zeroed too; this matters
    # to HingeLoss, which keeps its forward result in the bottom's diff).
    for pb in layer.blobs:
        pb.diff[...] = 0
    for bname in param_sources:
        blobs[bname].diff[...] = 0
    for k, t in enumerate(top):
        key = "top_diff_%d" % k
        if key in gold.files:
            t.diff[...] = t.xp.asarray(gold[key])
        elif k < len(lp.loss_weight):
            t.diff[...] = lp.loss_weight[k]
        else:
            t.diff[...] = 1.0 if (k == 0 and layer.is_loss) else 0.0
    if len(lp.propagate_down):
        assert len(lp.propagate_down) == len(bottom), "case %s: propagate_down count" % name
        propagate_down = [bool(p) for p in lp.propagate_down]
    else:
        propagate_down = [True] * len(bottom)
    # Input-fed bottoms get garbage diffs, so a layer that forgets to write
    # (overwrite) its bottom diff is caught.
    for bname, b, p in zip(lp.bottom, bottom, propagate_down):
        if (p and bname not in param_sources and "bottom_diff_%d" % sources[bname] in gold.files
                and all(b is not t for t in top)):
            b.diff[...] = np.nan
    layer.backward(top, propagate_down, bottom)

    for bname, b, p in zip(lp.bottom, bottom, propagate_down):
        key = "bottom_diff_%d" % sources[bname]
        if p and key in gold.files:
            _close(to_numpy(b.diff), gold[key], "case %s: %s" % (name, key))
    for j in range(nparam):
        key = "param_diff_%d" % j
        if key in gold.files:
            _close(to_numpy(layer.blobs[j].diff), gold[key], "case %s: %s" % (name, key))
