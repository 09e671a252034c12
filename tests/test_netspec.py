"""NetSpec DSL: pycaffe's naming and keyword rules, plus the checks pycaffe lacks."""
import warnings

import pytest

from netspec import NetSpec, TEST, TRAIN, caffe_pb2, layers as L, params as P, to_proto
from netspec.errors import NetSpecError
from netspec.net_spec import (NetSpecWarning, STANDARD_LAYER_TYPES, add_layer_type,
                              param_name_dict)


def layer_by_name(net, name):
    matches = [layer for layer in net.layer if layer.name == name]
    assert len(matches) == 1, [layer.name for layer in net.layer]
    return matches[0]


def quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


# -- the parameter map ----------------------------------------------------------

def test_param_map_comes_from_the_schema():
    names = param_name_dict()
    assert names["Convolution"] == "convolution_param"
    assert names["InnerProduct"] == "inner_product_param"
    assert names["LRN"] == "lrn_param"
    assert names["Python"] == "python_param"
    assert names["DummyData"] == "dummy_data_param"
    assert names["Deconvolution"] == "convolution_param"  # shares Convolution's message
    assert names["SoftmaxWithLoss"] == "softmax_param"
    # every *_param field of LayerParameter is reachable from its type name
    fields = [f for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields if f.name.endswith("_param")]
    for field in fields:
        assert names[field.message_type.name[:-len("Parameter")]] == field.name


def test_layer_fields_and_own_param_fields_do_not_clash():
    """Routing LayerParameter fields first is then the same as pycaffe's own-message-first."""
    top = set(caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name)
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param"):
            assert not top & set(field.message_type.fields_by_name), field.name


# -- naming ---------------------------------------------------------------------

def test_anonymous_names_count_per_type():
    data = L.Input(shape=dict(dim=[2, 3]))
    a = L.InnerProduct(data, num_output=4)
    b = L.InnerProduct(L.ReLU(a), num_output=5)
    net = quiet(to_proto, L.Softmax(b))
    assert [layer.name for layer in net.layer] == ["Input1", "InnerProduct1", "ReLU1",
                                                    "InnerProduct2", "Softmax1"]
    assert [list(layer.top) for layer in net.layer] == [["Input1"], ["InnerProduct1"], ["ReLU1"],
                                                        ["InnerProduct2"], ["Softmax1"]]
    assert list(net.layer[3].bottom) == ["ReLU1"]


def test_netspec_names_layers_and_tops_and_keeps_definition_order():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.fc = L.InnerProduct(n.data, num_output=3)
    n.prob = L.Softmax(n.fc)
    net = quiet(n.to_proto)
    assert [(lay.name, list(lay.bottom), list(lay.top)) for lay in net.layer] == [
        ("data", [], ["data"]), ("fc", ["data"], ["fc"]), ("prob", ["fc"], ["prob"])]
    assert n.keys() == ["data", "fc", "prob"]
    assert n["fc"] is n.fc and "prob" in n


def test_unnamed_intermediate_inside_a_netspec_gets_an_auto_name():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.out = L.Sigmoid(L.TanH(n.data))
    net = quiet(n.to_proto)
    assert [(lay.name, list(lay.top)) for lay in net.layer] == [
        ("data", ["data"]), ("TanH1", ["TanH1"]), ("out", ["out"])]


def test_name_keyword_renames_the_layer_not_the_top():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.y = L.ReLU(n.data, name="relu_layer")
    layer = layer_by_name(quiet(n.to_proto), "relu_layer")
    assert list(layer.top) == ["y"]


def test_layers_emitted_inputs_first_once():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.a = L.ReLU(n.data)
    n.b = L.Eltwise(n.a, n.a)
    n.c = L.Eltwise(n.b, n.a)
    net = quiet(n.to_proto)
    assert [lay.name for lay in net.layer] == ["data", "a", "b", "c"]
    assert list(net.layer[3].bottom) == ["b", "a"]


def test_to_proto_of_several_tops_shares_layers():
    data = L.Input(shape=dict(dim=[2, 3]))
    a = L.ReLU(data)
    b = L.Sigmoid(data)
    net = quiet(to_proto, a, b)
    assert [lay.name for lay in net.layer] == ["Input1", "ReLU1", "Sigmoid1"]


def test_deep_chain_does_not_hit_the_recursion_limit():
    top = L.Input(shape=dict(dim=[1]))
    for _ in range(3000):
        top = L.ReLU(top)
    net = quiet(to_proto, top)
    assert len(net.layer) == 3001 and net.layer[-1].name == "ReLU3000"


# -- in_place and ntop ------------------------------------------------------------

def test_in_place_writes_the_bottom_blob():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]))
    n.fc = L.InnerProduct(n.data, num_output=2)
    n.relu = L.ReLU(n.fc, in_place=True)
    n.drop = L.Dropout(n.relu, in_place=True, dropout_ratio=0.3)
    n.out = L.Softmax(n.drop)
    net = quiet(n.to_proto)
    relu, drop, out = (layer_by_name(net, x) for x in ("relu", "drop", "out"))
    assert list(relu.bottom) == list(relu.top) == ["fc"]
    assert list(drop.bottom) == list(drop.top) == ["fc"]
    assert drop.dropout_param.dropout_ratio == pytest.approx(0.3)
    assert list(out.bottom) == ["fc"]
    assert "in_place" not in str(net) and "ntop" not in str(net)


def test_anonymous_in_place_layer_takes_an_auto_name():
    data = L.Input(shape=dict(dim=[1]))
    net = quiet(to_proto, L.ReLU(data, in_place=True))
    assert net.layer[1].name == "ReLU1" and list(net.layer[1].top) == ["Input1"]


def test_ntop_many_returns_a_tuple_named_in_order():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[4, 6]))
    n.a, n.b, n.c = L.Slice(n.data, axis=1, slice_point=[2, 4], ntop=3)
    n.cat = L.Concat(n.c, n.a, n.b)
    net = quiet(n.to_proto)
    sl = layer_by_name(net, "a")
    assert list(sl.top) == ["a", "b", "c"] and list(sl.slice_param.slice_point) == [2, 4]
    assert list(layer_by_name(net, "cat").bottom) == ["c", "a", "b"]


def test_anonymous_multi_top_layer_names_each_top():
    tops = L.DummyData(shape=[dict(dim=[1]), dict(dim=[1]), dict(dim=[1])], ntop=3)
    assert isinstance(tops, tuple) and len(tops) == 3
    net = quiet(to_proto, L.Eltwise(*tops))
    assert list(net.layer[0].top) == ["DummyData1", "DummyData2", "DummyData3"]
    assert net.layer[0].name == "DummyData1"


def test_ntop_zero_returns_the_layer_itself():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    n.silence = L.Silence(n.data, ntop=0)
    net = quiet(n.to_proto)
    silence = layer_by_name(net, "silence")
    assert list(silence.top) == [] and list(silence.bottom) == ["data"]
    anon = quiet(to_proto, L.Silence(L.Input(shape=dict(dim=[1])), ntop=0))
    assert anon.layer[1].name == "Silence1"


def test_multi_top_tuple_cannot_be_one_bottom_or_one_name():
    tops = L.DummyData(shape=[dict(dim=[1]), dict(dim=[1])], ntop=2)
    with pytest.raises(NetSpecError, match="unpack"):
        L.ReLU(tops)
    n = NetSpec()
    with pytest.raises(NetSpecError, match="unpack"):
        n.both = tops
    with pytest.raises(NetSpecError, match="ntop"):
        L.ReLU(tops[0], ntop=-1)


# -- keyword routing ------------------------------------------------------------

def test_keywords_go_to_layer_or_own_param():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=[1], bias_term=False,
                           weight_filler=dict(type="gaussian", std=0.5),
                           param=[dict(lr_mult=1, decay_mult=1)], loss_weight=0.25,
                           propagate_down=True, phase=TRAIN,
                           include=[dict(phase=TRAIN), dict(stage=["a", "b"])],
                           exclude=dict(not_stage="x"))
    conv = layer_by_name(quiet(n.to_proto), "conv")
    cp = conv.convolution_param
    assert cp.num_output == 4 and list(cp.kernel_size) == [3] and list(cp.pad) == [1]
    assert cp.bias_term is False and cp.weight_filler.type == "gaussian"
    assert cp.weight_filler.std == pytest.approx(0.5)
    assert conv.param[0].lr_mult == 1 and list(conv.loss_weight) == [0.25]
    assert list(conv.propagate_down) == [True] and conv.phase == TRAIN
    assert conv.include[0].phase == TRAIN and list(conv.include[1].stage) == ["a", "b"]
    assert list(conv.exclude[0].not_stage) == ["x"]


def test_explicit_param_messages_and_shared_messages():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.up = L.Deconvolution(n.data, num_output=2, kernel_size=2, stride=2)
    n.pool = L.Pooling(n.up, pooling_param=dict(pool=P.Pooling.AVE, kernel_size=2))
    n.py = L.Python(n.pool, module="m", layer="L", param_str="{}")
    n.prob = L.Softmax(n.py, axis=1)
    n.loss = L.SoftmaxWithLoss(n.py, n.prob, axis=1, loss_param=dict(ignore_label=3))
    net = quiet(n.to_proto)
    assert layer_by_name(net, "up").convolution_param.num_output == 2
    assert layer_by_name(net, "pool").pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert layer_by_name(net, "py").python_param.module == "m"
    assert layer_by_name(net, "prob").softmax_param.axis == 1
    loss = layer_by_name(net, "loss")
    assert loss.softmax_param.axis == 1 and loss.loss_param.ignore_label == 3


def test_enum_values_by_name_and_by_constant():
    a = L.Pooling(L.Input(shape=dict(dim=[1, 1, 2, 2])), pool="STOCHASTIC", kernel_size=2)
    b = L.Pooling(L.Input(shape=dict(dim=[1, 1, 2, 2])), pool=P.Pooling.STOCHASTIC, kernel_size=2)
    assert quiet(to_proto, a).layer[1] == quiet(to_proto, b).layer[1]
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.Loss.VALID == caffe_pb2.LossParameter.VALID
    with pytest.raises(NetSpecError, match="MAX"):
        L.Pooling(L.Input(shape=dict(dim=[1])), pool="MAXX")


def test_message_values_and_tuples_are_accepted():
    filler = caffe_pb2.FillerParameter(type="xavier")
    top = L.InnerProduct(L.Input(shape=dict(dim=(2, 3))), num_output=2, weight_filler=filler)
    net = quiet(to_proto, top)
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3]
    assert net.layer[1].inner_product_param.weight_filler.type == "xavier"


def test_update_changes_parameters_of_a_named_layer():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3]))
    n.fc = L.InnerProduct(n.data, num_output=2)
    n.update("fc", dict(num_output=7))
    assert layer_by_name(quiet(n.to_proto), "fc").inner_product_param.num_output == 7
    with pytest.raises(NetSpecError, match="num_outputs"):
        n.update("fc", dict(num_outputs=7))
    assert layer_by_name(quiet(n.to_proto), "fc").inner_product_param.num_output == 7


# -- errors with suggestions ----------------------------------------------------

def test_unknown_keyword_names_type_keyword_and_closest_fields():
    with pytest.raises(NetSpecError) as err:
        L.Convolution(L.Input(shape=dict(dim=[1])), num_outptu=3)
    text = str(err.value)
    assert "Convolution" in text and "'num_outptu'" in text and "num_output" in text


def test_unknown_keyword_belonging_to_another_message_says_where_it_goes():
    with pytest.raises(NetSpecError, match="loss_param=dict"):
        L.SoftmaxWithLoss(L.Input(shape=dict(dim=[1])), ignore_label=1)


def test_unknown_nested_field_names_the_path():
    with pytest.raises(NetSpecError) as err:
        L.Convolution(L.Input(shape=dict(dim=[1])), num_output=1, weight_filler=dict(stdd=1.0))
    text = str(err.value)
    assert "weight_filler" in text and "'stdd'" in text and "'std'" in text


def test_wrongly_typed_values_raise_netspec_errors():
    bottom = L.Input(shape=dict(dim=[1]))
    with pytest.raises(NetSpecError, match="kernel_size"):
        L.Pooling(bottom, kernel_size="two")
    with pytest.raises(NetSpecError, match="num_output"):
        L.InnerProduct(bottom, num_output=[1, 2])
    with pytest.raises(NetSpecError, match="weight_filler"):
        L.InnerProduct(bottom, num_output=1, weight_filler="xavier")
    with pytest.raises(NetSpecError, match="type"):
        L.ReLU(bottom, type="Sigmoid")
    with pytest.raises(NetSpecError, match="bottom 0"):
        L.ReLU("data")


def test_unknown_layer_type_suggests_the_nearest():
    with pytest.raises(NetSpecError, match="did you mean 'Convolution'|Did you mean 'Convolution'"):
        L.Convolutoin
    with pytest.raises(NetSpecError, match="SoftmaxWithLoss"):
        L.SoftmaxWithLos
    assert not hasattr(L, "NoSuchLayerAtAll")  # still an AttributeError for hasattr()


def test_standard_types_cover_every_v1_type():
    v1 = set(caffe_pb2.V1LayerParameter.LayerType.keys()) - {"NONE"}
    squash = {t.replace("_", "").lower() for t in v1} | {"softmaxloss"}
    modern = {t.lower() for t in STANDARD_LAYER_TYPES}
    # SOFTMAX_LOSS is SoftmaxWithLoss today; every other V1 name is its modern name without "_"
    assert squash - {"softmaxloss"} <= modern and "softmaxwithloss" in modern


def test_added_and_registered_types_are_known(monkeypatch):
    from netspec import net_spec
    from solvers.layer import LAYER_REGISTRY, Layer
    monkeypatch.setattr(net_spec, "_extra_types", set())
    add_layer_type("MyForkLayer")
    assert quiet(to_proto, L.MyForkLayer(L.Input(shape=dict(dim=[1])))).layer[1].type == "MyForkLayer"
    with pytest.raises(NetSpecError):
        L.NetSpecTestOnlyType
    monkeypatch.setitem(LAYER_REGISTRY, "NetSpecTestOnlyType", type("NetSpecTestOnly", (Layer,), {}))
    L.NetSpecTestOnlyType  # a registered back-end layer is a known type


def test_unknown_param_constant_suggests():
    with pytest.raises(NetSpecError, match="MAX"):
        P.Pooling.MAXX
    with pytest.raises(NetSpecError, match="Pooling"):
        P.Poolin


def test_missing_netspec_name_is_an_attribute_error_with_suggestion():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    with pytest.raises(AttributeError, match="'data'"):
        n.dat
    with pytest.raises(NetSpecError, match="L.<Type>"):
        n.x = 3


# -- spec-time checks -----------------------------------------------------------

def test_two_layers_writing_one_top_is_an_error_naming_both():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.ReLU1 = L.Sigmoid(n.data)          # a user name that equals an automatic one
    n.out = L.Eltwise(n.ReLU1, L.ReLU(n.data))
    with pytest.raises(NetSpecError) as err:
        n.to_proto()
    text = str(err.value)
    assert "'ReLU1'" in text and "Sigmoid" in text and "ReLU" in text


def test_in_place_means_top_i_is_bottom_i_as_in_caffe():
    n = NetSpec()
    n.a = L.Input(shape=dict(dim=[1, 2]))
    n.b = L.Input(shape=dict(dim=[1, 2]))
    n.c = L.Eltwise(n.a, n.b, top="b", ntop=0)  # writes 'b' from position 0: not in place
    with pytest.raises(NetSpecError, match="'b'"):
        n.to_proto()


def test_same_top_in_different_phases_is_allowed():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]), include=dict(phase=TRAIN))
    n.data_test = L.Input(shape=dict(dim=[1, 2]), top="data", ntop=0, include=dict(phase=TEST))
    n.out = L.ReLU(n.data)
    net = quiet(n.to_proto)
    assert [list(lay.top) for lay in net.layer[:2]] == [["data"], ["data"]]
    n.clash = L.Input(shape=dict(dim=[1, 2]), top="data", ntop=0)
    with pytest.raises(NetSpecError, match="'data'"):
        n.to_proto()


def test_unconsumed_input_warns_with_its_name():
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    n.fc = L.InnerProduct(n.data, num_output=2)
    with pytest.warns(NetSpecWarning, match="'label'") as record:
        n.to_proto()
    message = str(record[0].message)
    assert "'label' (layer 'data', type DummyData)" in message and "'data' (" not in message
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    quiet(n.to_proto)  # everything consumed: no warning


def test_numpy_values_are_plain_values():
    np = pytest.importorskip("numpy")
    top = L.InnerProduct(L.Input(shape=dict(dim=np.array([2, 3]))), num_output=np.int64(4),
                         weight_filler=dict(std=np.float32(0.5)), loss_weight=np.array([0.5]))
    ip = quiet(to_proto, top).layer[1]
    assert ip.inner_product_param.num_output == 4 and list(ip.loss_weight) == [0.5]
    assert ip.inner_product_param.weight_filler.std == 0.5
