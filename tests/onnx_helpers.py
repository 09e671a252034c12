"""What the ONNX tests share: random weights and inputs for a net, and the agreement check.

The check runs the toolkit's forward and ONNX Runtime's on the same inputs and
compares every net output at rel 1e-5 (max |ours - theirs| / max |ours|).
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")


from netspec.io import read_net  # noqa: E402
from solvers.net import Net  # noqa: E402
from solvers.onnx_export import forward_both as run_both, net_to_onnx, rel_err  # noqa: E402,F401

TOL = 1e-5


def input_net(layers_text, inputs):
    """A NetParameter: one Input layer per (name, shape) of ``inputs``, then ``layers_text``."""
    head = "".join('layer { name: "in_%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
                   % (n, n, " ".join("dim: %d" % d for d in s)) for n, s in inputs)
    return read_net(head + layers_text)


def randomise(net, rng):
    """Random parameters in every layer (Caffe's default fillers give zeros); statistics positive."""
    for name, layer in zip(net.layer_names, net.layers):
        for j, b in enumerate(layer.blobs):
            v = rng.standard_normal(b.shape)
            if layer.type == "BatchNorm":
                v = [v * 0.5, rng.uniform(0.5, 1.5, b.shape), rng.uniform(0.5, 2.0, b.shape)][j]
            b.data[...] = v


def fill_inputs(net, rng, kinds=None, batch=None):
    """Random input values (normal, or per blob 'positive', 'index:K', 'cont'); optional new batch size."""
    kinds = kinds or {}
    values = {}
    for name in net.inputs:
        shape = list(net.blobs[name].shape)
        if batch is not None and kinds.get(name) != "fixed":
            shape[0] = batch
        kind = kinds.get(name, "normal")
        if kind == "positive":
            v = rng.uniform(0.2, 2.0, shape)
        elif kind.startswith("index:"):
            v = rng.randint(0, int(kind[6:]), shape)
        elif kind == "cont":
            v = (rng.uniform(0, 1, shape) < 0.7).astype(float)
            v[0] = 0
        else:
            v = rng.standard_normal(shape)
        values[name] = np.ascontiguousarray(v, np.float32)
    return values


def assert_agree(net, model, values, tol=TOL, what=""):
    onnx.checker.check_model(model, full_check=True)
    ours, theirs = run_both(net, model, values)
    assert set(ours) == set(theirs), "outputs differ: %s vs %s" % (sorted(ours), sorted(theirs))
    for name in ours:
        err = rel_err(ours[name], theirs[name])
        assert err <= tol, "%s output %r: rel err %.3g > %g (shapes %s, %s)" % (
            what, name, err, tol, ours[name].shape, np.shape(theirs[name]))


def check_layers(layers_text, inputs, kinds=None, seed=0, dynamic=True, phase="TEST"):
    """Build, randomise, export (static, and dynamic batch unless told not) and compare."""
    rng = np.random.RandomState(seed)
    net = Net(input_net(layers_text, inputs), phase=phase)
    randomise(net, rng)
    values = fill_inputs(net, rng, kinds)
    assert_agree(net, net_to_onnx(net), values, what="static")
    if dynamic:
        model = net_to_onnx(net, dynamic_batch=True)
        batch = net.blobs[net.inputs[0]].shape[0] + 1
        assert_agree(net, model, fill_inputs(net, rng, kinds, batch=batch), what="dynamic batch")
    return net


# -- the model-zoo golden cases (../shared/golden/zoo, through tests/zoo_cases.py) --------

def zoo_case(case_id):
    """(deploy Net with the case's seeded weights, {input: values}) for a zoo case."""
    import zoo_cases
    from solvers.onnx_export import deploy_net
    prototxt, weights, inputs = zoo_cases.case_files(case_id)
    net, _ = deploy_net(read_net(str(prototxt)), str(weights))
    with np.load(str(inputs)) as feed:
        values = {n: feed[n] for n in net.inputs}
    return net, values


def round_trip(net, tmp_path=None, dynamic=False):
    """The net exported to ONNX and imported back: a new Net with the imported weights."""
    from solvers.onnx_import import onnx_to_caffe
    model = net_to_onnx(net, dynamic_batch=dynamic)
    param, weights = onnx_to_caffe(model, {n: net.blobs[n].shape for n in net.inputs})
    back = Net(param, phase="TEST")
    back.copy_from(weights)
    return back


def assert_same_outputs(net, back, values, tol=TOL):
    """Both nets' outputs (by name) on the same inputs agree at rel ``tol``."""
    outs = {}
    for n_ in (net, back):
        for name, v in values.items():
            n_.blobs[name].reshape(v.shape)
        n_.reshape()
        for name, v in values.items():
            n_.blobs[name].data[...] = v
        n_.forward()
        outs[n_] = {o: n_.blobs[o].data.copy() for o in n_.outputs}
    assert set(outs[net]) <= set(outs[back]), (net.outputs, back.outputs)
    for o in outs[net]:
        err = rel_err(outs[net][o], outs[back][o])
        assert err <= tol, "output %r after the round trip: rel err %.3g" % (o, err)
