"""Net semantics: filtering, splits, in-place, loss weights, need-backward, sharing, weights I/O.

Most tests use tiny layers defined here (NetTest*), whose forward and
backward are one line each, so that what is checked is the Net and not a
layer written elsewhere. Tests that need Caffe's real layers (Split, Input,
InnerProduct, SoftmaxWithLoss, Convolution, ...) fail clearly when one of
those layers is not registered.
"""
from pathlib import Path

import numpy as np
import pytest

from netspec import caffe_pb2
from netspec.errors import CaffeError, LayerError, NetError
from solvers.insert_splits import insert_splits
from solvers.layer import LAYER_REGISTRY, Layer, layer_type_list, register_layer
from solvers.net import Net
from solvers.net_state import filter_net, state_meets_rule

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"

layer_type_list()   # import the layer library before looking at the registry


def need_types(*types):
    missing = [t for t in types if t not in LAYER_REGISTRY]
    if missing:
        pytest.fail("layer type(s) %s are not registered" % ", ".join(missing))


# -- tiny layers with obvious gradients -------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _test_layers():
    """Register the NetTest* layers for this module only, so other suites see the real registry."""
    added = [n for n in TEST_LAYERS if n not in LAYER_REGISTRY]
    for name in added:
        register_layer(name)(TEST_LAYERS[name])
    yield
    for name in added:
        LAYER_REGISTRY.pop(name, None)


class NetTestInput(Layer):
    """Tops shaped by input_param, like Caffe's Input."""
    exact_num_bottom = 0

    def layer_setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        for i, t in enumerate(top):
            t.reshape(tuple(shapes[min(i, len(shapes) - 1)].dim))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


class NetTestScale(Layer):
    """top = w * bottom, one weight per feature (w starts at 1, 2, 3, ...)."""
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        from solvers.blob import Blob
        w = Blob(bottom[0].shape[1:])
        w.data[...] = np.arange(1, w.count + 1, dtype=np.float32).reshape(w.shape)
        self.blobs = [w]
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data


class NetTestSumLoss(Layer):
    """loss = sum(bottom[0]); an optional second bottom (a 'label') takes no gradient."""
    min_bottom, max_bottom = 1, 2
    exact_num_top = 1
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.sum()

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff


class NetTestAutoTop(Layer):
    """Copies its bottom to top 0 and ones to top 1; top 1 is created when not named."""
    exact_num_bottom = 1
    exact_num_top = 2
    auto_top_blobs = True

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        top[1].data[...] = 1


class NetTestBroken(Layer):
    """Fails in set-up the way an unguarded NumPy call would."""

    def layer_setup(self, bottom, top):
        np.zeros(3).reshape(2, 2)

    def reshape(self, bottom, top):
        pass


TEST_LAYERS = {cls.__name__: cls for cls in
               (NetTestInput, NetTestScale, NetTestSumLoss, NetTestAutoTop, NetTestBroken)}


def net_text(*layers, extra=""):
    return extra + "\n".join("layer { %s }" % spec for spec in layers)


INPUT = 'name: "data" type: "NetTestInput" top: "data" input_param { shape { dim: 2 dim: 3 } }'
SCALE = 'name: "%s" type: "NetTestScale" bottom: "%s" top: "%s"'
LOSS = 'name: "loss" type: "NetTestSumLoss" bottom: "%s" top: "loss"'


def fill_input(net, name="data"):
    x = np.arange(net.blobs[name].count, dtype=np.float32).reshape(net.blobs[name].shape) - 2.5
    net.blobs[name].data[...] = x
    return x


# -- NetState filtering ----------------------------------------------------------------------

def _state(phase=caffe_pb2.TRAIN, level=0, stages=()):
    s = caffe_pb2.NetState(phase=phase, level=level)
    s.stage.extend(stages)
    return s


def _rule(**kw):
    stage = kw.pop("stage", ())
    not_stage = kw.pop("not_stage", ())
    r = caffe_pb2.NetStateRule(**kw)
    r.stage.extend(stage)
    r.not_stage.extend(not_stage)
    return r


@pytest.mark.parametrize("rule, state, met", [
    (dict(phase=caffe_pb2.TRAIN), dict(), True),
    (dict(phase=caffe_pb2.TEST), dict(), False),
    (dict(min_level=1), dict(level=1), True),
    (dict(min_level=2), dict(level=1), False),
    (dict(max_level=1), dict(level=2), False),
    (dict(max_level=1), dict(level=1), True),
    (dict(stage=["a", "b"]), dict(stages=["a"]), False),
    (dict(stage=["a", "b"]), dict(stages=["b", "a", "c"]), True),
    (dict(not_stage=["a"]), dict(stages=["a"]), False),
    (dict(not_stage=["a"]), dict(stages=["b"]), True),
    (dict(phase=caffe_pb2.TRAIN, stage=["x"]), dict(stages=["x"]), True),
    (dict(), dict(), True),
])
def test_state_meets_rule(rule, state, met):
    assert state_meets_rule(_state(**state), _rule(**rule), "l") is met


def test_filter_include_exclude_by_phase_level_stage():
    text = net_text(
        INPUT,
        'name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN }',
        'name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST }',
        'name: "not_test" type: "ReLU" bottom: "data" top: "c" exclude { phase: TEST }',
        'name: "deep" type: "ReLU" bottom: "data" top: "d" include { min_level: 2 }',
        'name: "staged" type: "ReLU" bottom: "data" top: "e" include { stage: "deploy" }',
        'name: "either" type: "ReLU" bottom: "data" top: "f" include { stage: "x" } include { phase: TEST }',
    )
    names = lambda **kw: Net(text, **kw).layer_names  # noqa: E731
    assert [n for n in names(phase="TRAIN") if "split" not in n] == ["data", "train_only", "not_test"]
    assert [n for n in names(phase=caffe_pb2.TEST) if "split" not in n] == ["data", "test_only", "either"]
    assert "deep" in names(phase="TRAIN", level=2)
    assert "staged" in names(phase="TRAIN", stages=["deploy"])
    assert "either" in names(phase="TRAIN", stages=("x",))


def test_phase_defaults_to_state_and_is_given_to_layers():
    param = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Merge(net_text(INPUT, extra="state { phase: TRAIN }"), param)
    net = Net(param)
    assert net.phase == caffe_pb2.TRAIN
    assert net.layers[0].phase == caffe_pb2.TRAIN
    assert Net(param, phase="test").layers[0].layer_param.phase == caffe_pb2.TEST
    assert Net(net_text(INPUT)).phase == caffe_pb2.TEST   # NetState's default phase


def test_include_and_exclude_together_is_an_error():
    text = net_text(INPUT, 'name: "r" type: "ReLU" bottom: "data" top: "r" '
                           'include { phase: TRAIN } exclude { phase: TEST }')
    with pytest.raises(NetError, match="'r'.*either include rules or exclude rules"):
        Net(text)


def test_filter_net_keeps_everything_else():
    param = caffe_pb2.NetParameter(name="n", force_backward=True)
    param.layer.add(name="a", type="ReLU").include.add(phase=caffe_pb2.TRAIN)  # state: TEST
    param.layer.add(name="b", type="ReLU")
    out = filter_net(param)
    assert [lp.name for lp in out.layer] == ["b"] and out.name == "n" and out.force_backward


# -- split insertion ------------------------------------------------------------------------

def _param(text):
    from google.protobuf import text_format
    return text_format.Merge(text, caffe_pb2.NetParameter())


def test_insert_splits_names_as_caffe():
    param = _param(net_text(INPUT, SCALE % ("s1", "data", "s1"), SCALE % ("s2", "data", "s2"),
                            'name: "cat" type: "Eltwise" bottom: "s1" bottom: "s2" bottom: "s1" top: "c"'))
    out = insert_splits(param)
    assert [lp.name for lp in out.layer] == ["data", "data_data_0_split", "s1", "s1_s1_0_split", "s2", "cat"]
    split = out.layer[1]
    assert split.type == "Split" and list(split.bottom) == ["data"]
    assert list(split.top) == ["data_data_0_split_0", "data_data_0_split_1"]
    assert list(out.layer[2].bottom) == ["data_data_0_split_0"]
    assert list(out.layer[4].bottom) == ["data_data_0_split_1"]
    assert list(out.layer[5].bottom) == ["s1_s1_0_split_0", "s2", "s1_s1_0_split_1"]
    assert list(out.layer[3].top) == ["s1_s1_0_split_0", "s1_s1_0_split_1"]


def test_insert_splits_moves_an_explicit_loss_to_the_split():
    param = _param(net_text(INPUT, SCALE % ("s", "data", "s") + " loss_weight: 2",
                            'name: "r" type: "ReLU" bottom: "s" top: "r"'))
    out = insert_splits(param)
    assert [lp.name for lp in out.layer] == ["data", "s", "s_s_0_split", "r"]
    assert list(out.layer[1].loss_weight) == []
    assert list(out.layer[2].loss_weight) == [2.0, 0.0]
    assert list(out.layer[3].bottom) == ["s_s_0_split_1"]   # split top 0 carries the loss


def test_insert_splits_for_deprecated_inputs():
    param = _param('input: "x" ' + net_text('name: "a" type: "ReLU" bottom: "x" top: "a"',
                                            'name: "b" type: "ReLU" bottom: "x" top: "b"'))
    out = insert_splits(param)
    assert out.layer[0].name == "x_input_0_split"
    assert list(out.layer[0].top) == ["x_input_0_split_0", "x_input_0_split_1"]


def test_single_use_and_in_place_need_no_split():
    param = _param(net_text(INPUT, 'name: "r" type: "ReLU" bottom: "data" top: "data"',
                            LOSS % "data"))
    assert [lp.name for lp in insert_splits(param).layer] == ["data", "r", "loss"]


def test_split_after_an_in_place_layer_is_named_after_it():
    param = _param(net_text(INPUT, 'name: "r" type: "ReLU" bottom: "data" top: "data"',
                            LOSS % "data", 'name: "l2" type: "NetTestSumLoss" bottom: "data" top: "l2"'))
    out = insert_splits(param)
    assert [lp.name for lp in out.layer] == ["data", "r", "data_r_0_split", "loss", "l2"]
    assert list(out.layer[1].bottom) == ["data"] and list(out.layer[1].top) == ["data"]
    assert list(out.layer[3].bottom) == ["data_r_0_split_0"]


def test_split_net_sums_diffs():
    need_types("Split")
    text = net_text(INPUT, SCALE % ("s1", "data", "s1"), SCALE % ("s2", "data", "s2"),
                    'name: "l1" type: "NetTestSumLoss" bottom: "s1" top: "l1"',
                    'name: "l2" type: "NetTestSumLoss" bottom: "s2" top: "l2" loss_weight: 3',
                    extra="force_backward: true ")
    net = Net(text)
    assert "data_data_0_split" in net.layer_names
    assert net.top_names["data_data_0_split"] == ["data_data_0_split_0", "data_data_0_split_1"]
    assert net.bottom_names["s1"] == ["data_data_0_split_0"]
    x = fill_input(net)
    loss = net.forward_backward()
    w = np.arange(1, 4, dtype=np.float32)
    assert loss == pytest.approx((x * w).sum() + 3 * (x * w).sum())
    # d loss / d data = w (through s1) + 3 w (through s2): the Split summed both.
    np.testing.assert_allclose(net.blobs["data"].diff, np.broadcast_to(4 * w, (2, 3)))
    np.testing.assert_allclose(net.params["s1"][0].diff, x.sum(0) * 1)
    np.testing.assert_allclose(net.params["s2"][0].diff, x.sum(0) * 3)


# -- blobs, in-place, outputs -------------------------------------------------------------------

def test_in_place_layers_share_the_blob():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), 'name: "r" type: "ReLU" bottom: "s" top: "s"',
                       LOSS % "s"))
    assert list(net.blobs) == ["data", "s", "loss"]
    assert net.top_vecs[2][0] is net.bottom_vecs[2][0] is net.blobs["s"]
    x = fill_input(net)
    loss = net.forward_from_to(0, len(net.layers) - 1)
    assert loss == pytest.approx(np.maximum(x * np.arange(1, 4), 0).sum())
    np.testing.assert_allclose(net.blobs["s"].data, np.maximum(x * np.arange(1, 4), 0))


def test_inputs_outputs_and_views():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "zz"), SCALE % ("t", "zz", "t"),
                       'name: "side" type: "ReLU" bottom: "data" top: "aa"'))
    # data feeds s and side: a split; outputs are the unconsumed blobs in name order, as Caffe's set
    assert net.inputs == []   # only the tops of layers of type "Input" are net inputs
    assert net.outputs == ["aa", "t"]
    assert list(net.params) == ["s", "t"]
    assert net.layer_dict["s"] is net.layers[net.layer_names.index("s")]
    assert net._layer_names is net.layer_names
    assert net.has_blob("zz") and not net.has_blob("nope") and net.has_layer("side")
    assert net.layer_by_name("side").type == "ReLU"
    assert net.param_names == ["0", "0"]


def test_auto_top_blobs_are_created_but_not_usable():
    net = Net(net_text(INPUT, 'name: "auto" type: "NetTestAutoTop" bottom: "data" top: "copy"'))
    assert len(net.top_vecs[1]) == 2
    assert net._blob_names[-1] == "(automatic)"
    net.forward()
    assert (net.top_vecs[1][1].data == 1).all()


def test_pycaffe_forward_and_backward():
    need_types("Split", "Input")
    net = Net(net_text(INPUT.replace("NetTestInput", "Input"), SCALE % ("s", "data", "s"), SCALE % ("t", "s", "t"), LOSS % "t",
                       extra="force_backward: true "))
    x = np.ones((2, 3), np.float32)
    out = net.forward(data=x)
    assert set(out) == {"loss"}
    w = np.arange(1, 4)
    assert float(out["loss"]) == pytest.approx(2 * (w * w).sum())
    out = net.forward(blobs=["s"], end="s")
    assert set(out) == {"s"}
    np.testing.assert_allclose(out["s"], np.broadcast_to(w, (2, 3)))
    out = net.forward(start="t")
    assert float(out["loss"]) == pytest.approx(2 * (w * w).sum())
    diffs = net.backward(diffs=["s"])
    assert set(diffs) == {"data", "s"}
    np.testing.assert_allclose(diffs["data"], np.broadcast_to(w * w, (2, 3)))
    diffs = net.backward(start="t", end="t")
    assert set(diffs) == {"s"}
    np.testing.assert_allclose(diffs["s"], np.broadcast_to(w, (2, 3)))
    with pytest.raises(NetError, match="do not match the net's inputs"):
        net.forward(label=x)
    with pytest.raises(NetError, match="not batch sized"):
        net.forward(data=np.ones((3, 3), np.float32))
    with pytest.raises(NetError, match=r"has shape \(2, 4\) but the blob has \(2, 3\)"):
        net.forward(data=np.ones((2, 4), np.float32))
    with pytest.raises(NetError, match="no layer 'nope'"):
        net.forward(end="nope")


def test_reshape_follows_a_new_input_shape():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), LOSS % "s"))
    net.blobs["data"].reshape(5, 3)
    net.reshape()
    assert net.blobs["s"].shape == (5, 3)
    net.blobs["data"].reshape(4, 3)
    net.forward()   # forward reshapes too, as Caffe's Layer::Forward
    assert net.blobs["s"].shape == (4, 3)


# -- loss weights --------------------------------------------------------------------------------

def test_loss_weights_default_and_explicit():
    need_types("Split")
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s") + " loss_weight: 0.5", LOSS % "s"))
    # the explicit loss on s moved to the first top of s's Split, as Caffe's InsertSplits does
    assert net.blob_loss_weights == {"data": 0, "s": 0, "s_s_0_split_0": 0.5, "s_s_0_split_1": 0,
                                     "loss": 1.0}
    loss_layer = net.layer_by_name("loss")
    assert list(loss_layer.layer_param.loss_weight) == [1.0]   # written into the param, as Caffe
    x = fill_input(net)
    w = np.arange(1, 4)
    assert net.forward_backward() == pytest.approx(1.5 * (x * w).sum())
    np.testing.assert_allclose(net.params["s"][0].diff, 1.5 * x.sum(0))


def test_loss_weight_on_a_plain_layer_and_zero_weight_on_a_loss_layer():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s") + " loss_weight: 2",
                       'name: "loss" type: "NetTestSumLoss" bottom: "data" top: "loss" loss_weight: 0'))
    assert net.blob_loss_weights["s"] == 2 and net.blob_loss_weights["loss"] == 0
    assert (net.blobs["s"].diff == 2).all()   # SetLossWeights fills the diff at set-up
    x = fill_input(net)
    assert net.forward_backward() == pytest.approx(2 * (x * np.arange(1, 4)).sum())
    assert net.layer_need_backward[net.layer_names.index("loss")] is False


def test_loss_weight_count_must_match_tops():
    with pytest.raises(NetError, match="'auto'.*loss_weight is given 1 times for 2 tops"):
        Net(net_text(INPUT, 'name: "auto" type: "NetTestAutoTop" bottom: "data" top: "a" top: "b" '
                            'loss_weight: 1'))


# -- which layers need backward ----------------------------------------------------------------------

def test_need_backward():
    text = net_text(INPUT,
                    SCALE % ("frozen", "data", "f") + " param { lr_mult: 0 }",
                    SCALE % ("learn", "f", "g"),
                    SCALE % ("dead", "data", "h"),
                    LOSS % "g")
    net = Net(text)
    nb = dict(zip(net.layer_names, net.layer_need_backward))
    bnb = dict(zip(net.layer_names, net.bottom_need_backward))
    # frozen: no learnable param and its bottom is an input -> nothing to do
    assert nb["frozen"] is False and net.layer_by_name("frozen").param_propagate_down == [False]
    assert nb["learn"] is True and bnb["learn"] == [False]
    assert nb["dead"] is False          # does not reach a loss
    assert nb["loss"] is True and bnb["loss"] == [True]
    fill_input(net)
    net.forward_backward()
    assert not net.layer_by_name("frozen").blobs[0].diff.any()
    assert net.layer_by_name("learn").blobs[0].diff.any()


def test_propagate_down_false_stops_gradients():
    text = net_text(INPUT, SCALE % ("s", "data", "s"),
                    SCALE % ("t", "s", "t") + " propagate_down: false",
                    LOSS % "t")
    net = Net(text)
    nb = dict(zip(net.layer_names, net.layer_need_backward))
    assert net.bottom_need_backward[net.layer_names.index("t")] == [False]
    assert nb["t"] is True           # its own weight still learns
    assert nb["s"] is False          # skipped: nobody propagates into its top
    with pytest.raises(NetError, match="propagate_down is given 2 times for 1 bottoms"):
        Net(net_text(INPUT, SCALE % ("s", "data", "s") + " propagate_down: 0 propagate_down: 1"))


def test_force_backward_respects_allow_force_backward():
    text = net_text('name: "data" type: "NetTestInput" top: "data" top: "label" '
                    'input_param { shape { dim: 2 dim: 3 } }',
                    'name: "loss" type: "NetTestSumLoss" bottom: "data" bottom: "label" top: "loss"')
    plain = Net(text)
    assert plain.bottom_need_backward[1] == [False, False]
    forced = Net("force_backward: true " + text)
    assert forced.bottom_need_backward[1] == [True, False]
    assert forced.blob_need_backward["data"] and not forced.blob_need_backward["label"]
    forced.forward_backward()
    np.testing.assert_allclose(forced.blobs["data"].diff, 1)


# -- parameter sharing --------------------------------------------------------------------------------

def test_shared_params_share_data_and_accumulate_into_one_diff():
    need_types("Split")
    text = net_text(INPUT,
                    SCALE % ("a", "data", "a") + ' param { name: "w" lr_mult: 2 }',
                    SCALE % ("b", "data", "b") + ' param { name: "w" decay_mult: 3 }',
                    'name: "la" type: "NetTestSumLoss" bottom: "a" top: "la"',
                    'name: "lb" type: "NetTestSumLoss" bottom: "b" top: "lb"')
    net = Net(text)
    wa, wb = net.params["a"][0], net.params["b"][0]
    assert len(net.learnable_params) == 1 and net.learnable_params[0] is wa
    assert net.params_lr == [2.0] and net.params_weight_decay == [3.0]
    assert np.shares_memory(wa.data, wb.data) and np.shares_memory(wa.diff, wb.diff)
    x = fill_input(net)
    net.clear_param_diffs()
    net.forward_backward()
    np.testing.assert_allclose(wa.diff, 2 * x.sum(0))   # both layers' gradients in one diff
    net.update()
    np.testing.assert_allclose(wb.data, np.arange(1, 4) - 2 * x.sum(0))


def test_shared_param_shape_checks():
    strict = net_text('name: "data" type: "NetTestInput" top: "data" top: "d2" '
                      'input_param { shape { dim: 2 dim: 3 } shape { dim: 3 dim: 3 dim: 1 } }',
                      SCALE % ("a", "data", "a") + ' param { name: "w" }',
                      SCALE % ("b", "d2", "b") + ' param { name: "w" %s }')
    with pytest.raises(NetError, match="'b' param 0 shares 'w' with layer 'a'.*shapes differ"):
        Net(strict % "")
    net = Net(strict % "share_mode: PERMISSIVE")
    assert np.shares_memory(net.params["a"][0].data, net.params["b"][0].data)
    with pytest.raises(NetError, match="mismatched lr_mult"):
        Net(net_text(INPUT, SCALE % ("a", "data", "a") + ' param { name: "w" lr_mult: 1 }',
                     SCALE % ("b", "data", "b") + ' param { name: "w" lr_mult: 2 }'))


def test_params_lr_default_and_too_many_specs():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s") + ' param { decay_mult: 0 }'))
    assert net.params_lr == [1.0] and net.params_weight_decay == [0.0]
    with pytest.raises(NetError, match="'s'.*2 param specs given but the layer has only 1"):
        Net(net_text(INPUT, SCALE % ("s", "data", "s") + " param {} param {}"))


def test_update_and_clear_param_diffs():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), LOSS % "s"))
    x = fill_input(net)
    net.forward_backward()
    net.forward_backward()   # parameter diffs accumulate
    w = net.params["s"][0]
    np.testing.assert_allclose(w.diff, 2 * x.sum(0))
    net.update()
    np.testing.assert_allclose(w.data, np.arange(1, 4) - 2 * x.sum(0))
    net.clear_param_diffs()
    assert not w.diff.any()


# -- weights I/O ----------------------------------------------------------------------------------------

def test_save_copy_from_round_trip(tmp_path):
    text = net_text(INPUT, SCALE % ("s", "data", "s"), LOSS % "s")
    net = Net(text)
    net.params["s"][0].data[...] = [7, 8, 9]
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    saved = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert [lp.name for lp in saved.layer] == ["data", "s", "loss"]
    assert list(saved.layer[1].blobs[0].shape.dim) == [3]
    assert saved.layer[1].phase == caffe_pb2.TEST and list(saved.layer[2].loss_weight) == [1.0]
    other = Net(text)
    other.copy_from(str(path))
    np.testing.assert_allclose(other.params["s"][0].data, [7, 8, 9])
    assert not list(tmp_path.glob("*.tmp"))
    again = Net(text, weights=path)
    np.testing.assert_allclose(again.params["s"][0].data, [7, 8, 9])
    # to_proto with diffs
    net.params["s"][0].diff[...] = 1
    assert list(net.to_proto(write_diff=True).layer[1].blobs[0].diff) == [1, 1, 1]


def test_copy_from_ignores_unknown_layers_and_keeps_missing_ones():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), SCALE % ("t", "s", "t")))
    src = caffe_pb2.NetParameter()
    lp = src.layer.add(name="t")
    lp.blobs.add().CopyFrom(_blob_proto([4, 5, 6]))
    src.layer.add(name="not_in_net").blobs.add().CopyFrom(_blob_proto([1]))
    net.copy_from(src)
    np.testing.assert_allclose(net.params["t"][0].data, [4, 5, 6])
    np.testing.assert_allclose(net.params["s"][0].data, [1, 2, 3])


def _blob_proto(values, shape=None):
    b = caffe_pb2.BlobProto()
    b.shape.dim.extend(shape or [len(values)])
    b.data.extend(values)
    return b


def test_copy_from_legacy_4d_blob_shapes():
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s")))
    src = caffe_pb2.NetParameter()
    b = src.layer.add(name="s").blobs.add(num=1, channels=1, height=1, width=3)
    b.data.extend([3, 2, 1])
    net.copy_from(src)
    np.testing.assert_allclose(net.params["s"][0].data, [3, 2, 1])


def test_copy_from_v1_caffemodel(tmp_path):
    need_types("Input", "InnerProduct")
    net = Net(net_text(INPUT.replace("NetTestInput", "Input"),
                       'name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                       'inner_product_param { num_output: 2 }'))
    v1 = caffe_pb2.NetParameter()
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.bottom.append("data")
    layer.top.append("ip")
    layer.blobs.add(num=1, channels=1, height=2, width=3).data.extend(range(6))
    layer.blobs.add(num=1, channels=1, height=1, width=2).data.extend([7, 8])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1.SerializeToString())
    net.copy_from(str(path))
    np.testing.assert_allclose(net.params["ip"][0].data, np.arange(6).reshape(2, 3))
    np.testing.assert_allclose(net.params["ip"][1].data, [7, 8])


def test_copy_from_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), SCALE % ("t", "s", "t")))
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data/t/0", data=np.array([4, 5, 6], np.float32))
        f.create_dataset("data/other/0", data=np.zeros(2, np.float32))
    net.copy_from(str(path))
    np.testing.assert_allclose(net.params["t"][0].data, [4, 5, 6])
    np.testing.assert_allclose(net.params["s"][0].data, [1, 2, 3])
    with h5py.File(path, "w") as f:
        f.create_dataset("data/t/0", data=np.zeros(4, np.float32))
    with pytest.raises(NetError, match=r"layer 't' blob 0: shape mismatch, the net has \(3,\) but"):
        net.copy_from(str(path))


def test_copy_from_mismatch_names_layer_blob_and_shapes(tmp_path):
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s")))
    src = caffe_pb2.NetParameter()
    src.layer.add(name="s").blobs.add().CopyFrom(_blob_proto([1, 2, 3, 4]))
    with pytest.raises(NetError, match=r"layer 's' blob 0: shape mismatch, the net has \(3,\) but .* holds \(4,\)"):
        net.copy_from(src)
    src.layer[0].blobs.add().CopyFrom(_blob_proto([1]))
    with pytest.raises(NetError, match="'s': incompatible number of blobs, the net has 1 but .* 2"):
        net.copy_from(src)
    with pytest.raises(NetError, match="not found"):
        net.copy_from(str(tmp_path / "missing.caffemodel"))
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff not a proto")
    with pytest.raises(CaffeError):
        net.copy_from(str(bad))


def test_share_with():
    text = net_text(INPUT, SCALE % ("s", "data", "s"))
    a, b = Net(text), Net(text)
    b.share_with(a)
    a.params["s"][0].data[...] = 5
    np.testing.assert_allclose(b.params["s"][0].data, 5)
    c = Net(net_text('name: "data" type: "NetTestInput" top: "data" input_param { shape { dim: 2 dim: 4 } }',
                     SCALE % ("s", "data", "s")))
    with pytest.raises(NetError, match=r"share_with: layer 's' blob 0 has shape \(4,\) here but \(3,\)"):
        c.share_with(a)


# -- construction errors ----------------------------------------------------------------------------------

def test_unknown_bottom_names_layer_blob_and_tops():
    with pytest.raises(NetError, match=r"layer 's' \(type NetTestScale\), bottom 0: unknown bottom blob "
                                       r"'dta'.*Did you mean 'data'.*Tops produced before this layer: 'data'"):
        Net(net_text(INPUT, SCALE % ("s", "dta", "s")))


def test_duplicate_top_is_an_error():
    with pytest.raises(NetError, match="layer 't'.*top 's' is already produced by layer 's'"):
        Net(net_text(INPUT, SCALE % ("s", "data", "s"), SCALE % ("t", "data", "s")))


def test_setup_failures_name_the_layer():
    with pytest.raises(LayerError, match=r"layer 'b' \(type NetTestBroken\): set-up failed: ValueError"):
        Net(net_text(INPUT, 'name: "b" type: "NetTestBroken" bottom: "data" top: "b"'))
    with pytest.raises(LayerError, match="unknown layer type 'NoSuchType'"):
        Net(net_text(INPUT, 'name: "x" type: "NoSuchType" bottom: "data" top: "x"'))


def test_net_file_path_and_errors(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(net_text(INPUT, SCALE % ("s", "data", "s")))
    assert Net(str(path), phase="TRAIN").layer_names == ["data", "s"]
    assert Net(path).layer_names == ["data", "s"]
    with pytest.raises(CaffeError, match="missing.prototxt"):
        Net(str(tmp_path / "missing.prototxt"))
    with pytest.raises(NetError, match="unknown phase 'VAL'"):
        Net(str(path), phase="VAL")


def test_debug_info_logs_norms(caplog):
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), LOSS % "s", extra="debug_info: true "))
    fill_input(net)
    with caplog.at_level("INFO", logger="solvers.net"):
        net.forward_backward()
    text = caplog.text
    assert "[Forward] Layer data, top blob data data: 1.5" in text
    assert "[Forward] Layer s, top blob s data:" in text
    assert "[Forward] Layer s, param blob 0 data: 2" in text
    assert "[Backward] Layer s, param blob 0 diff:" in text
    assert "[Backward] All net params (data, diff): L1 norm = (6," in text


# -- with Caffe's real layers -----------------------------------------------------------------------------

def test_real_layers_small_classifier():
    need_types("Input", "InnerProduct", "ReLU", "SoftmaxWithLoss", "Split", "Accuracy")
    net = Net("""
      layer { name: "data" type: "Input" top: "data" top: "label"
              input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
      layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
      layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
      layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
    """, phase="TRAIN")
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["acc", "loss"]
    assert "ip_relu_0_split" in net.layer_names and "label_data_1_split" in net.layer_names
    assert net.blob_loss_weights["loss"] == 1 and net.blob_loss_weights["acc"] == 0
    rng = np.random.default_rng(0)
    out = net.forward(data=rng.standard_normal((4, 6)).astype(np.float32),
                      label=np.array([0, 1, 2, 1], np.float32))
    assert out["loss"].shape == () and 0 <= float(out["acc"]) <= 1
    net.backward()
    assert net.params["ip"][0].diff.any()
    assert dict(zip(net.layer_names, net.layer_need_backward))["acc"] is False


def _lenet_with_inputs(batch=64):
    """The golden LeNet with its Data layer replaced by an Input layer of the same tops."""
    from google.protobuf import text_format
    param = text_format.Merge((GOLDEN / "lenet" / "lenet_auto_train.prototxt").read_text(),
                              caffe_pb2.NetParameter())
    data = param.layer[0]
    assert data.type == "Data"
    data.ClearField("transform_param")
    data.ClearField("data_param")
    data.type = "Input"
    data.input_param.shape.add().dim.extend([batch, 1, 28, 28])
    data.input_param.shape.add().dim.extend([batch])
    return param


def test_copy_from_golden_lenet_init():
    model = GOLDEN / "lenet" / "lenet_init.caffemodel"
    if not model.is_file():
        pytest.skip("golden data not found at %s" % model.parent)
    need_types("Input", "Convolution", "Pooling", "InnerProduct", "ReLU", "SoftmaxWithLoss")
    net = Net(_lenet_with_inputs(), phase="TRAIN")
    assert list(net.params) == ["conv1", "conv2", "fc1", "score"]
    net.copy_from(str(model))
    gold = caffe_pb2.NetParameter.FromString(model.read_bytes())
    for lp in gold.layer:
        for j, b in enumerate(lp.blobs):
            np.testing.assert_array_equal(net.params[lp.name][j].data.ravel(), np.asarray(b.data, np.float32))
    assert [tuple(b.shape) for b in net.params["fc1"]] == [(500, 800), (500,)]
    bad = _lenet_with_inputs()
    bad.layer[5].inner_product_param.num_output = 400
    with pytest.raises(NetError, match=r"layer 'fc1' blob 0: shape mismatch, the net has \(400, 800\) "
                                       r"but .*lenet_init.caffemodel holds \(500, 800\)"):
        Net(bad, phase="TRAIN", weights=str(model))


# -- tools/time.py and bench/lenet.py ------------------------------------------------------------------------

def _load_script(relpath):
    import importlib.util
    path = Path(__file__).resolve().parents[1] / relpath
    spec = importlib.util.spec_from_file_location("_script_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_net_reports_caffe_lines():
    from solvers.timing import time_net
    net = Net(net_text(INPUT, SCALE % ("s", "data", "s"), LOSS % "s"), phase="TRAIN")
    lines = []
    result = time_net(net, iterations=2, report=lines.append)
    assert lines[:3] == ["Performing Forward", "Initial loss: %g" % net.forward_from_to(0, 2),
                         "Performing Backward"]
    assert "Testing for 2 iterations." in lines
    assert any(l.startswith("Iteration: 2 forward-backward time: ") for l in lines)
    assert "         s\tforward: %g ms." % result["forward"][1] in lines
    assert any(l.startswith("Average Forward-Backward: ") for l in lines)
    assert lines[-1] == "*** Benchmark ends ***"
    assert result["layers"] == ["data", "s", "loss"] and result["forward_backward"] > 0


def test_time_tool_names_a_missing_data_source(tmp_path, capsys, monkeypatch):
    tool = _load_script("tools/time.py")
    monkeypatch.setattr(tool, "_install_logging", lambda: None)   # keep pytest's log capture intact
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "d" type: "Data" top: "data" top: "label" '
                     'data_param { source: "no_such_lmdb" batch_size: 2 backend: LMDB } }')
    assert tool.main(["--model", str(model), "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert "data source" in err and "no_such_lmdb" in err


def test_lenet_bench_smoke(capsys):
    if not (GOLDEN / "lenet" / "lenet_auto_train.prototxt").is_file():
        pytest.skip("golden LeNet not found at %s" % (GOLDEN / "lenet"))
    need_types("Input", "Convolution", "Pooling", "InnerProduct", "ReLU", "SoftmaxWithLoss")
    bench = _load_script("bench/lenet.py")
    assert bench.main(["--iterations", "1", "--warmup", "0", "--batch", "4", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "forward-backward" in out and "peak RSS" in out
