"""netspec.upgrade and the upgrade tools: old Caffe files read as Caffe reads them."""

import subprocess
import sys
from pathlib import Path

import pytest

from netspec import caffe_pb2, io
from netspec.errors import ProtoError
from netspec.upgrade import (
    SOLVER_TYPE_NAMES, V0_LAYER_TYPES, V1_LAYER_TYPE_NAMES, net_needs_upgrade, upgrade_net,
    upgrade_solver,
)

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
LEGACY = GOLDEN / "legacy"

NET_PAIRS = [("lenet_v1.prototxt", "lenet_v1_upgraded.prototxt"),
             ("deploy_input_dim.prototxt", "deploy_input_dim_upgraded.prototxt")]


def legacy(name):
    path = LEGACY / name
    if not path.exists():
        pytest.skip(f"golden legacy data not found at {path} (BVLC Caffe reference files absent)")
    return path


def net(text):
    return io.parse_text(text, caffe_pb2.NetParameter)


# ---------------------------------------------------------------- Caffe's own upgrades

@pytest.mark.parametrize("old,new", NET_PAIRS)
def test_legacy_net_reads_as_caffe_upgraded_it(old, new):
    upgraded = io.read_net(legacy(old))
    expected = io.read_text(legacy(new), caffe_pb2.NetParameter)
    assert upgraded == expected
    assert not net_needs_upgrade(upgraded)
    assert upgrade_net(upgraded) is False  # nothing left to do


def test_legacy_solver_reads_as_caffe_upgraded_it():
    upgraded = io.read_solver(legacy("solver_legacy.prototxt"))
    expected = io.read_text(legacy("solver_legacy_upgraded.prototxt"), caffe_pb2.SolverParameter)
    assert upgraded == expected
    assert not upgraded.HasField("solver_type") and upgraded.type == "Nesterov"


def test_golden_solver_with_legacy_adam_type():
    path = GOLDEN / "solvers" / "legacy_solver_type_adam.solver.prototxt"
    if not path.exists():
        pytest.skip(f"golden solver data not found at {path}")
    solver = io.read_solver(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")


# ---------------------------------------------------------------- V1 -> V2 rules

def test_v1_type_table_covers_every_enum_value():
    names = set(caffe_pb2.V1LayerParameter.LayerType.keys())
    assert set(V1_LAYER_TYPE_NAMES) == names
    assert V1_LAYER_TYPE_NAMES["CONVOLUTION"] == "Convolution"
    assert V1_LAYER_TYPE_NAMES["INNER_PRODUCT"] == "InnerProduct"
    assert V1_LAYER_TYPE_NAMES["SOFTMAX_LOSS"] == "SoftmaxWithLoss"
    assert V1_LAYER_TYPE_NAMES["TANH"] == "TanH"
    assert V1_LAYER_TYPE_NAMES["IM2COL"] == "Im2col"


def test_every_v1_type_upgrades_to_its_string():
    for enum_name, type_name in V1_LAYER_TYPE_NAMES.items():
        n = net(f'layers {{ name: "l" type: {enum_name} }}')
        upgrade_net(n)
        assert n.layer[0].type == type_name and len(n.layers) == 0


def test_blobs_lr_and_weight_decay_become_param_specs():
    n = net('layers { name: "c" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 weight_decay: 0.5 }')
    assert upgrade_net(n) is True
    specs = n.layer[0].param
    assert [(s.lr_mult, s.HasField("decay_mult")) for s in specs] == [(1, True), (2, False)]
    assert specs[0].decay_mult == 0.5 and specs[1].decay_mult == 1  # schema default


def test_v1_param_names_share_modes_loss_weight_and_params_carry_over():
    n = net('''name: "n" force_backward: true
    layers { name: "a" type: INNER_PRODUCT bottom: "x" top: "y"
             param: "w" param: "b" blob_share_mode: PERMISSIVE
             loss_weight: 2 include { phase: TEST } exclude { stage: "s" }
             inner_product_param { num_output: 7 } loss_param { ignore_label: 3 }
             blobs { shape { dim: 1 } data: 4 } }''')
    upgrade_net(n)
    layer = n.layer[0]
    assert n.name == "n" and n.force_backward
    assert (layer.name, list(layer.bottom), list(layer.top)) == ("a", ["x"], ["y"])
    assert [s.name for s in layer.param] == ["w", "b"]
    assert layer.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not layer.param[1].HasField("share_mode")
    assert list(layer.loss_weight) == [2]
    assert layer.include[0].phase == caffe_pb2.TEST and layer.exclude[0].stage == ["s"]
    assert layer.inner_product_param.num_output == 7
    assert layer.loss_param.ignore_label == 3
    assert list(layer.blobs[0].data) == [4]


def test_v1_upgrade_drops_new_style_layers_with_a_warning():
    n = net('layer { name: "new" type: "ReLU" } layers { name: "old" type: RELU }')
    notes = []
    upgrade_net(n, notes)
    assert [l.name for l in n.layer] == ["old"]
    assert any(note.startswith("warning:") for note in notes)


# ---------------------------------------------------------------- data transformation

@pytest.mark.parametrize("enum_name,param", [("DATA", "data_param"),
                                             ("IMAGE_DATA", "image_data_param"),
                                             ("WINDOW_DATA", "window_data_param")])
def test_v1_data_layer_transform_fields_move_to_transform_param(enum_name, param):
    n = net(f'layers {{ name: "d" type: {enum_name} {param} {{ source: "s" scale: 0.5 '
            f'mean_file: "m.binaryproto" crop_size: 3 mirror: true }} }}')
    upgrade_net(n)
    layer = n.layer[0]
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.5, "m.binaryproto", 3, True)
    kept = getattr(layer, param)
    assert kept.source == "s"
    assert not any(kept.HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror"))


# ---------------------------------------------------------------- inputs

def test_input_shape_becomes_first_input_layer():
    n = net('''input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 }
               layer { name: "r" type: "ReLU" bottom: "a" top: "a" }''')
    upgrade_net(n)
    first = n.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["a", "b"])
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2], [3]]
    assert n.layer[1].name == "r"
    assert not n.input and not n.input_shape and not n.input_dim


def test_input_dim_groups_of_four_per_input():
    n = net('input: "a" input: "b" ' + " ".join(f"input_dim: {d}" for d in range(1, 9)))
    upgrade_net(n)
    assert [list(s.dim) for s in n.layer[0].input_param.shape] == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_input_without_shape_is_just_dropped():
    n = net('input: "data" layer { name: "r" type: "ReLU" }')
    assert upgrade_net(n) is True
    assert [l.name for l in n.layer] == ["r"] and not n.input


def test_input_dim_count_mismatch_is_a_named_error():
    with pytest.raises(ProtoError, match="input_dim"):
        upgrade_net(net('name: "short" input: "a" input_dim: 1 input_dim: 2'))


# ---------------------------------------------------------------- V0 nets

V0_NET = '''name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 group: 1
                 biasterm: false weight_filler { type: "gaussian" std: 0.1 }
                 blobs_lr: 1 weight_decay: 0 } bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
layers { layer { name: "ip" type: "innerproduct" num_output: 10 } bottom: "pool1" top: "ip" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "ip" bottom: "label" top: "loss" }
'''


def test_v0_net_upgrades_padding_and_parameters():
    n = net(V0_NET.replace('bottom: "label" ', ""))
    notes = []
    assert upgrade_net(n, notes)
    assert [(l.name, l.type) for l in n.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("drop", "Dropout"),
        ("ip", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    conv = n.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded in
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride)) == ([2], [3], [2])
    assert cp.num_output == 4 and cp.bias_term is False and cp.weight_filler.std == pytest.approx(0.1)
    assert (conv.param[0].lr_mult, conv.param[0].decay_mult) == (1, 0)
    pp = n.layer[2].pooling_param
    assert (pp.pool, pp.kernel_size, pp.stride) == (caffe_pb2.PoolingParameter.AVE, 2, 2)
    assert n.layer[3].dropout_param.dropout_ratio == pytest.approx(0.3)
    assert n.layer[4].inner_product_param.num_output == 10
    assert list(n.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert len(notes) >= 3


def test_v0_data_layer_fields():
    n = net('layers { layer { name: "d" type: "data" source: "db" batchsize: 16 scale: 0.5 '
            'meanfile: "m" cropsize: 4 mirror: true rand_skip: 2 } top: "data" top: "label" }')
    upgrade_net(n)
    d = n.layer[0]
    assert d.type == "Data"
    assert (d.data_param.source, d.data_param.batch_size, d.data_param.rand_skip) == ("db", 16, 2)
    t = d.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.5, "m", 4, True)


def test_v0_mismatched_parameter_is_dropped_with_a_warning():
    n = net('layers { layer { name: "r" type: "relu" num_output: 3 } }')
    notes = []
    upgrade_net(n, notes)
    assert n.layer[0].type == "ReLU"
    assert any("num_output" in note and note.startswith("warning:") for note in notes)


def test_v0_errors_are_named():
    with pytest.raises(ProtoError, match="'frobnicate'"):
        upgrade_net(net('layers { layer { name: "x" type: "frobnicate" } }'))
    with pytest.raises(ProtoError, match="unknown blob 'nowhere'"):
        upgrade_net(net('layers { layer { name: "x" type: "relu" } bottom: "nowhere" }'))
    with pytest.raises(ProtoError, match="padding"):
        upgrade_net(net('input: "d" layers { layer { name: "p" type: "padding" pad: 1 } '
                        'bottom: "d" top: "p" } '
                        'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'))


def test_v0_type_table():
    assert V0_LAYER_TYPES["conv"] == "CONVOLUTION" and V0_LAYER_TYPES["images"] == "IMAGE_DATA"
    assert set(V0_LAYER_TYPES.values()) <= set(caffe_pb2.V1LayerParameter.LayerType.keys())


# ---------------------------------------------------------------- BatchNorm

def test_batchnorm_three_param_specs_get_zero_lr():
    n = net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 name: "m" } '
            'param { lr_mult: 1 } param { lr_mult: 1 } }'
            'layer { name: "bn2" type: "BatchNorm" }')
    assert upgrade_net(n)
    specs = n.layer[0].param
    assert [(s.lr_mult, s.decay_mult) for s in specs] == [(0, 0)] * 3
    assert specs[0].name == "m"  # everything else kept
    assert len(n.layer[1].param) == 0


# ---------------------------------------------------------------- solvers

@pytest.mark.parametrize("enum_name", sorted(SOLVER_TYPE_NAMES))
def test_solver_type_enum_becomes_type_string(enum_name):
    solver = io.parse_text(f"solver_type: {enum_name}", caffe_pb2.SolverParameter)
    assert upgrade_solver(solver) is True
    assert solver.type == SOLVER_TYPE_NAMES[enum_name] and not solver.HasField("solver_type")


def test_solver_with_both_type_fields_is_an_error():
    solver = io.parse_text('solver_type: ADAM type: "Adam"', caffe_pb2.SolverParameter)
    with pytest.raises(ProtoError, match="solver_type"):
        upgrade_solver(solver)


def test_modern_solver_is_untouched():
    solver = io.parse_text('type: "Adam" base_lr: 0.1', caffe_pb2.SolverParameter)
    before = caffe_pb2.SolverParameter()
    before.CopyFrom(solver)
    assert upgrade_solver(solver) is False and solver == before


# ---------------------------------------------------------------- the tools

def run_tool(name, *args, cwd=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or REPO, timeout=60)


def test_upgrade_net_tool_writes_what_caffe_writes(tmp_path):
    out = tmp_path / "lenet.prototxt"
    result = run_tool("upgrade_net.py", legacy("lenet_v1.prototxt"), out)
    assert result.returncode == 0, result.stderr
    assert "V1" in result.stdout
    assert out.read_text() == legacy("lenet_v1_upgraded.prototxt").read_text()
    result = run_tool("upgrade_net.py", legacy("deploy_input_dim.prototxt"), tmp_path / "d.prototxt")
    assert result.returncode == 0 and "Input layer" in result.stdout
    assert (tmp_path / "d.prototxt").read_text() == \
        legacy("deploy_input_dim_upgraded.prototxt").read_text()


def test_upgrade_solver_tool_writes_what_caffe_writes(tmp_path):
    out = tmp_path / "solver.prototxt"
    result = run_tool("upgrade_solver.py", legacy("solver_legacy.prototxt"), out)
    assert result.returncode == 0, result.stderr
    assert "Nesterov" in result.stdout
    assert out.read_text() == legacy("solver_legacy_upgraded.prototxt").read_text()


def test_upgrade_net_tool_binary_in_binary_out(tmp_path):
    old = caffe_pb2.NetParameter(name="v1weights")
    layer = old.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add(data=[1, 2, 3])
    layer.blobs_lr.extend([1, 2])
    io.write_binary(old, tmp_path / "old.caffemodel")
    # run from another directory with relative paths: the tool finds its package itself
    result = run_tool("upgrade_net.py", "old.caffemodel", "new.caffemodel", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "binary" in result.stdout
    new = io.read_binary(tmp_path / "new.caffemodel", caffe_pb2.NetParameter)
    assert not new.layers and new.layer[0].type == "InnerProduct"
    assert list(new.layer[0].blobs[0].data) == [1, 2, 3]
    assert [p.lr_mult for p in new.layer[0].param] == [1, 2]


def test_tools_report_errors_with_nonzero_exit(tmp_path):
    result = run_tool("upgrade_net.py", tmp_path / "missing.prototxt", tmp_path / "o.prototxt")
    assert result.returncode != 0
    assert "missing.prototxt" in result.stderr and "no such file" in result.stderr
    assert not (tmp_path / "o.prototxt").exists()
    bad = tmp_path / "bad.prototxt"
    bad.write_text('solver_type: NESTEROVV\n')
    result = run_tool("upgrade_solver.py", bad, tmp_path / "o.prototxt")
    assert result.returncode != 0 and f"{bad}:1:14:" in result.stderr
    assert "NESTEROV" in result.stderr
    result = run_tool("upgrade_net.py")
    assert result.returncode != 0 and "usage" in result.stderr


def test_upgrade_net_tool_on_current_file_copies_it(tmp_path):
    src = tmp_path / "cur.prototxt"
    io.write_text(net('name: "cur" layer { name: "r" type: "ReLU" }'), src)
    result = run_tool("upgrade_net.py", src, tmp_path / "out.prototxt")
    assert result.returncode == 0 and "already" in result.stdout
    assert (tmp_path / "out.prototxt").read_text() == src.read_text()
