"""The real nets: LeNet trained here and every net of ../shared/golden/zoo, exported to ONNX and
run in ONNX Runtime, agree with this toolkit's forward at rel 1e-5 -- on the net's outputs and on
the blob before each output (the logits: a saturated softmax alone would hide a difference) --
and, where Caffe's golden file holds the output in full, with Caffe's at its 1e-4."""
import numpy as np
import pytest

from onnx_helpers import TOL, assert_agree, fill_inputs, zoo_case  # skips without the onnx extra
import zoo_cases
from helpers import GOLDEN, need_golden

from netspec.io import read_net
from solvers.onnx_export import deploy_net, forward_both, net_to_onnx, rel_err

SLOW = {"bvlc_alexnet", "bvlc_alexnet_train", "fcn32s_voc_train", "fcn_alexnet_voc_train", "vgg16"}


def _params():
    if not zoo_cases.available():
        return [pytest.param(None, marks=pytest.mark.skip(reason="zoo golden files not found at %s"
                                                           % zoo_cases.ZOO))]
    return [pytest.param(i, marks=pytest.mark.slow) if i in SLOW else i for i in zoo_cases.load_cases()]


def _pre_outputs(net):
    """The bottoms of the layers that write the net's outputs."""
    out = []
    for name in net.layer_names:
        if any(t in net.outputs for t in net.top_names[name]):
            out += [b for b in net.bottom_names[name] if b not in net.inputs and b not in out]
    return out


@pytest.mark.parametrize("case_id", _params())
def test_zoo_net_agrees_with_onnxruntime(case_id):
    net, values = zoo_case(case_id)
    model = net_to_onnx(net, dynamic_batch=True, extra_outputs=_pre_outputs(net))
    ours, theirs = forward_both(net, model, values)
    assert len(ours) > len(net.outputs)
    for name in ours:
        err = rel_err(ours[name], theirs[name])
        assert err <= TOL, "%s %r: rel err %.3g" % (case_id, name, err)
    with zoo_cases.golden(case_id) as g:
        for name in net.outputs:
            if "full:data/" + name in g.files:
                caffe = g["full:data/" + name]
                err = np.abs(theirs[name].ravel() - caffe).max() / (g["stat:data/" + name][2] + 1e-12)
                assert err <= zoo_cases.TOL, "%s %r: ONNX Runtime vs Caffe rel err %.3g" % (case_id, name, err)


def test_trained_lenet_exports_and_agrees(tmp_path):
    """The golden LeNet (trained 500 iterations), from its train/test prototxt: deploy form derived."""
    need_golden()
    net, notes = deploy_net(read_net(str(GOLDEN / "lenet_auto_test.prototxt")),
                            str(GOLDEN / "lenet_iter_500.caffemodel"), {"data": (4, 1, 28, 28)})
    assert net.inputs == ["data"] and net.outputs == ["prob"], notes
    rng = np.random.RandomState(0)
    assert_agree(net, net_to_onnx(net), fill_inputs(net, rng))
    assert_agree(net, net_to_onnx(net, dynamic_batch=True), fill_inputs(net, rng, batch=7))
