"""The compiled schema (netspec.caffe_pb2) must be BVLC Caffe's, field for field.

The tables below were typed from BVLC Caffe's src/caffe/proto/caffe.proto
(master), not generated from our own bindings, so a drift in proto/caffe.proto
makes this test fail.

Message line:  ``Name: field:number:type:label[:default] ...``
  type   proto scalar keyword, or a message / enum name (nested names are
         tried inside the message first, then at top level)
  label  opt | rep | req | pk (repeated, [packed = true])
  default  as written in Caffe; ``""`` is the empty string
Enum line:     ``Full.Name: VALUE=number ...``
"""
import math

import numpy as np
import pytest

from google.protobuf.descriptor import FieldDescriptor as FD

from netspec import caffe_pb2
from netspec.descriptor_compat import is_repeated, is_required

MESSAGES = """
BlobShape: dim:1:int64:pk
BlobProto: shape:7:BlobShape:opt data:5:float:pk diff:6:float:pk double_data:8:double:pk double_diff:9:double:pk num:1:int32:opt:0 channels:2:int32:opt:0 height:3:int32:opt:0 width:4:int32:opt:0
BlobProtoVector: blobs:1:BlobProto:rep
Datum: channels:1:int32:opt height:2:int32:opt width:3:int32:opt data:4:bytes:opt label:5:int32:opt float_data:6:float:rep encoded:7:bool:opt:false
FillerParameter: type:1:string:opt:constant value:2:float:opt:0 min:3:float:opt:0 max:4:float:opt:1 mean:5:float:opt:0 std:6:float:opt:1 sparse:7:int32:opt:-1 variance_norm:8:VarianceNorm:opt:FAN_IN
NetParameter: name:1:string:opt input:3:string:rep input_shape:8:BlobShape:rep input_dim:4:int32:rep force_backward:5:bool:opt:false state:6:NetState:opt debug_info:7:bool:opt:false layer:100:LayerParameter:rep layers:2:V1LayerParameter:rep
SolverParameter: net:24:string:opt net_param:25:NetParameter:opt train_net:1:string:opt test_net:2:string:rep train_net_param:21:NetParameter:opt test_net_param:22:NetParameter:rep train_state:26:NetState:opt test_state:27:NetState:rep test_iter:3:int32:rep test_interval:4:int32:opt:0 test_compute_loss:19:bool:opt:false test_initialization:32:bool:opt:true base_lr:5:float:opt display:6:int32:opt average_loss:33:int32:opt:1 max_iter:7:int32:opt iter_size:36:int32:opt:1 lr_policy:8:string:opt gamma:9:float:opt power:10:float:opt momentum:11:float:opt weight_decay:12:float:opt regularization_type:29:string:opt:L2 stepsize:13:int32:opt stepvalue:34:int32:rep clip_gradients:35:float:opt:-1 snapshot:14:int32:opt:0 snapshot_prefix:15:string:opt snapshot_diff:16:bool:opt:false snapshot_format:37:SnapshotFormat:opt:BINARYPROTO solver_mode:17:SolverMode:opt:GPU device_id:18:int32:opt:0 random_seed:20:int64:opt:-1 type:40:string:opt:SGD delta:31:float:opt:1e-8 momentum2:39:float:opt:0.999 rms_decay:38:float:opt:0.99 debug_info:23:bool:opt:false snapshot_after_train:28:bool:opt:true solver_type:30:SolverType:opt:SGD layer_wise_reduce:41:bool:opt:true weights:42:string:rep
SolverState: iter:1:int32:opt learned_net:2:string:opt history:3:BlobProto:rep current_step:4:int32:opt:0
NetState: phase:1:Phase:opt:TEST level:2:int32:opt:0 stage:3:string:rep
NetStateRule: phase:1:Phase:opt min_level:2:int32:opt max_level:3:int32:opt stage:4:string:rep not_stage:5:string:rep
ParamSpec: name:1:string:opt share_mode:2:DimCheckMode:opt lr_mult:3:float:opt:1.0 decay_mult:4:float:opt:1.0
LayerParameter: name:1:string:opt type:2:string:opt bottom:3:string:rep top:4:string:rep phase:10:Phase:opt loss_weight:5:float:rep param:6:ParamSpec:rep blobs:7:BlobProto:rep propagate_down:11:bool:rep include:8:NetStateRule:rep exclude:9:NetStateRule:rep transform_param:100:TransformationParameter:opt loss_param:101:LossParameter:opt accuracy_param:102:AccuracyParameter:opt argmax_param:103:ArgMaxParameter:opt batch_norm_param:139:BatchNormParameter:opt bias_param:141:BiasParameter:opt clip_param:148:ClipParameter:opt concat_param:104:ConcatParameter:opt contrastive_loss_param:105:ContrastiveLossParameter:opt convolution_param:106:ConvolutionParameter:opt crop_param:144:CropParameter:opt data_param:107:DataParameter:opt dropout_param:108:DropoutParameter:opt dummy_data_param:109:DummyDataParameter:opt eltwise_param:110:EltwiseParameter:opt elu_param:140:ELUParameter:opt embed_param:137:EmbedParameter:opt exp_param:111:ExpParameter:opt flatten_param:135:FlattenParameter:opt hdf5_data_param:112:HDF5DataParameter:opt hdf5_output_param:113:HDF5OutputParameter:opt hinge_loss_param:114:HingeLossParameter:opt image_data_param:115:ImageDataParameter:opt infogain_loss_param:116:InfogainLossParameter:opt inner_product_param:117:InnerProductParameter:opt input_param:143:InputParameter:opt log_param:134:LogParameter:opt lrn_param:118:LRNParameter:opt memory_data_param:119:MemoryDataParameter:opt mvn_param:120:MVNParameter:opt parameter_param:145:ParameterParameter:opt pooling_param:121:PoolingParameter:opt power_param:122:PowerParameter:opt prelu_param:131:PReLUParameter:opt python_param:130:PythonParameter:opt recurrent_param:146:RecurrentParameter:opt reduction_param:136:ReductionParameter:opt relu_param:123:ReLUParameter:opt reshape_param:133:ReshapeParameter:opt scale_param:142:ScaleParameter:opt sigmoid_param:124:SigmoidParameter:opt softmax_param:125:SoftmaxParameter:opt spp_param:132:SPPParameter:opt slice_param:126:SliceParameter:opt swish_param:147:SwishParameter:opt tanh_param:127:TanHParameter:opt threshold_param:128:ThresholdParameter:opt tile_param:138:TileParameter:opt window_data_param:129:WindowDataParameter:opt
TransformationParameter: scale:1:float:opt:1 mirror:2:bool:opt:false crop_size:3:uint32:opt:0 mean_file:4:string:opt mean_value:5:float:rep force_color:6:bool:opt:false force_gray:7:bool:opt:false
LossParameter: ignore_label:1:int32:opt normalization:3:NormalizationMode:opt:VALID normalize:2:bool:opt
AccuracyParameter: top_k:1:uint32:opt:1 axis:2:int32:opt:1 ignore_label:3:int32:opt
ArgMaxParameter: out_max_val:1:bool:opt:false top_k:2:uint32:opt:1 axis:3:int32:opt
ClipParameter: min:1:float:req max:2:float:req
ConcatParameter: axis:2:int32:opt:1 concat_dim:1:uint32:opt:1
BatchNormParameter: use_global_stats:1:bool:opt moving_average_fraction:2:float:opt:.999 eps:3:float:opt:1e-5
BiasParameter: axis:1:int32:opt:1 num_axes:2:int32:opt:1 filler:3:FillerParameter:opt
ContrastiveLossParameter: margin:1:float:opt:1.0 legacy_version:2:bool:opt:false
ConvolutionParameter: num_output:1:uint32:opt bias_term:2:bool:opt:true pad:3:uint32:rep kernel_size:4:uint32:rep stride:6:uint32:rep dilation:18:uint32:rep pad_h:9:uint32:opt:0 pad_w:10:uint32:opt:0 kernel_h:11:uint32:opt kernel_w:12:uint32:opt stride_h:13:uint32:opt stride_w:14:uint32:opt group:5:uint32:opt:1 weight_filler:7:FillerParameter:opt bias_filler:8:FillerParameter:opt engine:15:Engine:opt:DEFAULT axis:16:int32:opt:1 force_nd_im2col:17:bool:opt:false
CropParameter: axis:1:int32:opt:2 offset:2:uint32:rep
DataParameter: source:1:string:opt batch_size:4:uint32:opt rand_skip:7:uint32:opt:0 backend:8:DB:opt:LEVELDB scale:2:float:opt:1 mean_file:3:string:opt crop_size:5:uint32:opt:0 mirror:6:bool:opt:false force_encoded_color:9:bool:opt:false prefetch:10:uint32:opt:4
DropoutParameter: dropout_ratio:1:float:opt:0.5
DummyDataParameter: data_filler:1:FillerParameter:rep shape:6:BlobShape:rep num:2:uint32:rep channels:3:uint32:rep height:4:uint32:rep width:5:uint32:rep
EltwiseParameter: operation:1:EltwiseOp:opt:SUM coeff:2:float:rep stable_prod_grad:3:bool:opt:true
ELUParameter: alpha:1:float:opt:1
EmbedParameter: num_output:1:uint32:opt input_dim:2:uint32:opt bias_term:3:bool:opt:true weight_filler:4:FillerParameter:opt bias_filler:5:FillerParameter:opt
ExpParameter: base:1:float:opt:-1.0 scale:2:float:opt:1.0 shift:3:float:opt:0.0
FlattenParameter: axis:1:int32:opt:1 end_axis:2:int32:opt:-1
HDF5DataParameter: source:1:string:opt batch_size:2:uint32:opt shuffle:3:bool:opt:false
HDF5OutputParameter: file_name:1:string:opt
HingeLossParameter: norm:1:Norm:opt:L1
ImageDataParameter: source:1:string:opt batch_size:4:uint32:opt:1 rand_skip:7:uint32:opt:0 shuffle:8:bool:opt:false new_height:9:uint32:opt:0 new_width:10:uint32:opt:0 is_color:11:bool:opt:true scale:2:float:opt:1 mean_file:3:string:opt crop_size:5:uint32:opt:0 mirror:6:bool:opt:false root_folder:12:string:opt:""
InfogainLossParameter: source:1:string:opt axis:2:int32:opt:1
InnerProductParameter: num_output:1:uint32:opt bias_term:2:bool:opt:true weight_filler:3:FillerParameter:opt bias_filler:4:FillerParameter:opt axis:5:int32:opt:1 transpose:6:bool:opt:false
InputParameter: shape:1:BlobShape:rep
LogParameter: base:1:float:opt:-1.0 scale:2:float:opt:1.0 shift:3:float:opt:0.0
LRNParameter: local_size:1:uint32:opt:5 alpha:2:float:opt:1. beta:3:float:opt:0.75 norm_region:4:NormRegion:opt:ACROSS_CHANNELS k:5:float:opt:1. engine:6:Engine:opt:DEFAULT
MemoryDataParameter: batch_size:1:uint32:opt channels:2:uint32:opt height:3:uint32:opt width:4:uint32:opt
MVNParameter: normalize_variance:1:bool:opt:true across_channels:2:bool:opt:false eps:3:float:opt:1e-9
ParameterParameter: shape:1:BlobShape:opt
PoolingParameter: pool:1:PoolMethod:opt:MAX pad:4:uint32:opt:0 pad_h:9:uint32:opt:0 pad_w:10:uint32:opt:0 kernel_size:2:uint32:opt kernel_h:5:uint32:opt kernel_w:6:uint32:opt stride:3:uint32:opt:1 stride_h:7:uint32:opt stride_w:8:uint32:opt engine:11:Engine:opt:DEFAULT global_pooling:12:bool:opt:false round_mode:13:RoundMode:opt:CEIL
PowerParameter: power:1:float:opt:1.0 scale:2:float:opt:1.0 shift:3:float:opt:0.0
PythonParameter: module:1:string:opt layer:2:string:opt param_str:3:string:opt:"" share_in_parallel:4:bool:opt:false
RecurrentParameter: num_output:1:uint32:opt:0 weight_filler:2:FillerParameter:opt bias_filler:3:FillerParameter:opt debug_info:4:bool:opt:false expose_hidden:5:bool:opt:false
ReductionParameter: operation:1:ReductionOp:opt:SUM axis:2:int32:opt:0 coeff:3:float:opt:1.0
ReLUParameter: negative_slope:1:float:opt:0 engine:2:Engine:opt:DEFAULT
ReshapeParameter: shape:1:BlobShape:opt axis:2:int32:opt:0 num_axes:3:int32:opt:-1
ScaleParameter: axis:1:int32:opt:1 num_axes:2:int32:opt:1 filler:3:FillerParameter:opt bias_term:4:bool:opt:false bias_filler:5:FillerParameter:opt
SigmoidParameter: engine:1:Engine:opt:DEFAULT
SliceParameter: axis:3:int32:opt:1 slice_point:2:uint32:rep slice_dim:1:uint32:opt:1
SoftmaxParameter: engine:1:Engine:opt:DEFAULT axis:2:int32:opt:1
SwishParameter: beta:1:float:opt:1
TanHParameter: engine:1:Engine:opt:DEFAULT
TileParameter: axis:1:int32:opt:1 tiles:2:int32:opt
ThresholdParameter: threshold:1:float:opt:0
WindowDataParameter: source:1:string:opt scale:2:float:opt:1 mean_file:3:string:opt batch_size:4:uint32:opt crop_size:5:uint32:opt:0 mirror:6:bool:opt:false fg_threshold:7:float:opt:0.5 bg_threshold:8:float:opt:0.5 fg_fraction:9:float:opt:0.25 context_pad:10:uint32:opt:0 crop_mode:11:string:opt:warp cache_images:12:bool:opt:false root_folder:13:string:opt:""
SPPParameter: pyramid_height:1:uint32:opt pool:2:PoolMethod:opt:MAX engine:6:Engine:opt:DEFAULT
V1LayerParameter: bottom:2:string:rep top:3:string:rep name:4:string:opt include:32:NetStateRule:rep exclude:33:NetStateRule:rep type:5:LayerType:opt blobs:6:BlobProto:rep param:1001:string:rep blob_share_mode:1002:DimCheckMode:rep blobs_lr:7:float:rep weight_decay:8:float:rep loss_weight:35:float:rep accuracy_param:27:AccuracyParameter:opt argmax_param:23:ArgMaxParameter:opt concat_param:9:ConcatParameter:opt contrastive_loss_param:40:ContrastiveLossParameter:opt convolution_param:10:ConvolutionParameter:opt data_param:11:DataParameter:opt dropout_param:12:DropoutParameter:opt dummy_data_param:26:DummyDataParameter:opt eltwise_param:24:EltwiseParameter:opt exp_param:41:ExpParameter:opt hdf5_data_param:13:HDF5DataParameter:opt hdf5_output_param:14:HDF5OutputParameter:opt hinge_loss_param:29:HingeLossParameter:opt image_data_param:15:ImageDataParameter:opt infogain_loss_param:16:InfogainLossParameter:opt inner_product_param:17:InnerProductParameter:opt lrn_param:18:LRNParameter:opt memory_data_param:22:MemoryDataParameter:opt mvn_param:34:MVNParameter:opt pooling_param:19:PoolingParameter:opt power_param:21:PowerParameter:opt relu_param:30:ReLUParameter:opt sigmoid_param:38:SigmoidParameter:opt softmax_param:39:SoftmaxParameter:opt slice_param:31:SliceParameter:opt tanh_param:37:TanHParameter:opt threshold_param:25:ThresholdParameter:opt window_data_param:20:WindowDataParameter:opt transform_param:36:TransformationParameter:opt loss_param:42:LossParameter:opt layer:1:V0LayerParameter:opt
V0LayerParameter: name:1:string:opt type:2:string:opt num_output:3:uint32:opt biasterm:4:bool:opt:true weight_filler:5:FillerParameter:opt bias_filler:6:FillerParameter:opt pad:7:uint32:opt:0 kernelsize:8:uint32:opt group:9:uint32:opt:1 stride:10:uint32:opt:1 pool:11:PoolMethod:opt:MAX dropout_ratio:12:float:opt:0.5 local_size:13:uint32:opt:5 alpha:14:float:opt:1. beta:15:float:opt:0.75 k:22:float:opt:1. source:16:string:opt scale:17:float:opt:1 meanfile:18:string:opt batchsize:19:uint32:opt cropsize:20:uint32:opt:0 mirror:21:bool:opt:false blobs:50:BlobProto:rep blobs_lr:51:float:rep weight_decay:52:float:rep rand_skip:53:uint32:opt:0 det_fg_threshold:54:float:opt:0.5 det_bg_threshold:55:float:opt:0.5 det_fg_fraction:56:float:opt:0.25 det_context_pad:58:uint32:opt:0 det_crop_mode:59:string:opt:warp new_num:60:int32:opt:0 new_channels:61:int32:opt:0 new_height:62:int32:opt:0 new_width:63:int32:opt:0 shuffle_images:64:bool:opt:false concat_dim:65:uint32:opt:1 hdf5_output_param:1001:HDF5OutputParameter:opt
PReLUParameter: filler:1:FillerParameter:opt channel_shared:2:bool:opt:false
"""

ENGINE = "DEFAULT=0 CAFFE=1 CUDNN=2"
POOL = "MAX=0 AVE=1 STOCHASTIC=2"
DIMCHECK = "STRICT=0 PERMISSIVE=1"
ENUMS = f"""
Phase: TRAIN=0 TEST=1
FillerParameter.VarianceNorm: FAN_IN=0 FAN_OUT=1 AVERAGE=2
SolverParameter.SnapshotFormat: HDF5=0 BINARYPROTO=1
SolverParameter.SolverMode: CPU=0 GPU=1
SolverParameter.SolverType: SGD=0 NESTEROV=1 ADAGRAD=2 RMSPROP=3 ADADELTA=4 ADAM=5
ParamSpec.DimCheckMode: {DIMCHECK}
LossParameter.NormalizationMode: FULL=0 VALID=1 BATCH_SIZE=2 NONE=3
ConvolutionParameter.Engine: {ENGINE}
DataParameter.DB: LEVELDB=0 LMDB=1
EltwiseParameter.EltwiseOp: PROD=0 SUM=1 MAX=2
HingeLossParameter.Norm: L1=1 L2=2
LRNParameter.NormRegion: ACROSS_CHANNELS=0 WITHIN_CHANNEL=1
LRNParameter.Engine: {ENGINE}
PoolingParameter.PoolMethod: {POOL}
PoolingParameter.Engine: {ENGINE}
PoolingParameter.RoundMode: CEIL=0 FLOOR=1
ReductionParameter.ReductionOp: SUM=1 ASUM=2 SUMSQ=3 MEAN=4
ReLUParameter.Engine: {ENGINE}
SigmoidParameter.Engine: {ENGINE}
SoftmaxParameter.Engine: {ENGINE}
TanHParameter.Engine: {ENGINE}
SPPParameter.PoolMethod: {POOL}
SPPParameter.Engine: {ENGINE}
V1LayerParameter.LayerType: NONE=0 ABSVAL=35 ACCURACY=1 ARGMAX=30 BNLL=2 CONCAT=3 CONTRASTIVE_LOSS=37 CONVOLUTION=4 DATA=5 DECONVOLUTION=39 DROPOUT=6 DUMMY_DATA=32 EUCLIDEAN_LOSS=7 ELTWISE=25 EXP=38 FLATTEN=8 HDF5_DATA=9 HDF5_OUTPUT=10 HINGE_LOSS=28 IM2COL=11 IMAGE_DATA=12 INFOGAIN_LOSS=13 INNER_PRODUCT=14 LRN=15 MEMORY_DATA=29 MULTINOMIAL_LOGISTIC_LOSS=16 MVN=34 POOLING=17 POWER=26 RELU=18 SIGMOID=19 SIGMOID_CROSS_ENTROPY_LOSS=27 SILENCE=36 SOFTMAX=20 SOFTMAX_LOSS=21 SPLIT=22 SLICE=33 TANH=23 WINDOW_DATA=24 THRESHOLD=31
V1LayerParameter.DimCheckMode: {DIMCHECK}
V0LayerParameter.PoolMethod: {POOL}
"""

SCALARS = {
    "double": FD.TYPE_DOUBLE, "float": FD.TYPE_FLOAT, "int64": FD.TYPE_INT64,
    "uint64": FD.TYPE_UINT64, "int32": FD.TYPE_INT32, "uint32": FD.TYPE_UINT32,
    "bool": FD.TYPE_BOOL, "string": FD.TYPE_STRING, "bytes": FD.TYPE_BYTES,
}
LABELS = {"opt": "opt", "rep": "rep", "req": "req", "pk": "rep"}


def _label(f):
    """opt/rep/req for a field (protobuf 7 dropped FieldDescriptor.label)."""
    if is_required(f):
        return "req"
    return "rep" if is_repeated(f) else "opt"


def _table(text):
    out = {}
    for line in text.strip().splitlines():
        name, _, rest = line.partition(":")
        assert name not in out, f"duplicate table line {name}"
        out[name.strip()] = rest.split()
    return out


EXPECTED_MESSAGES = _table(MESSAGES)
EXPECTED_ENUMS = _table(ENUMS)
POOL_FD = caffe_pb2.DESCRIPTOR


def _all_messages(descs):
    for d in descs:
        yield d
        yield from _all_messages(d.nested_types)


def _all_enums():
    yield from POOL_FD.enum_types_by_name.values()
    for m in _all_messages(POOL_FD.message_types_by_name.values()):
        yield from m.enum_types


def _resolve(owner, tname):
    """Full name of a message/enum type as Caffe's relative name resolves."""
    nested = f"caffe.{owner}.{tname}"
    top = f"caffe.{tname}"
    return nested, top


def _parse_field(tok):
    parts = tok.split(":")
    assert 4 <= len(parts) <= 5, tok
    name, num, tname, label = parts[:4]
    default = parts[4] if len(parts) == 5 else None
    return name, int(num), tname, label, default


def test_package_and_syntax():
    assert POOL_FD.package == "caffe"
    assert POOL_FD.name == "caffe.proto"


def test_message_count_and_names():
    found = {m.full_name for m in _all_messages(POOL_FD.message_types_by_name.values())}
    expected = {f"caffe.{n}" for n in EXPECTED_MESSAGES}
    assert len(expected) == 63
    assert found == expected
    assert len(found) == 63


def test_field_count():
    n = sum(len(v) for v in EXPECTED_MESSAGES.values())
    got = sum(len(m.fields) for m in _all_messages(POOL_FD.message_types_by_name.values()))
    assert got == n == 423


@pytest.mark.parametrize("msg_name", sorted(EXPECTED_MESSAGES))
def test_message_fields(msg_name):
    desc = POOL_FD.message_types_by_name.get(msg_name)
    assert desc is not None, msg_name
    expected = [_parse_field(t) for t in EXPECTED_MESSAGES[msg_name]]
    assert len({e[0] for e in expected}) == len(expected), "duplicate in table"
    assert sorted(f.name for f in desc.fields) == sorted(e[0] for e in expected)
    for name, num, tname, label, default in expected:
        f = desc.fields_by_name[name]
        where = f"{msg_name}.{name}"
        assert f.number == num, where
        assert _label(f) == LABELS[label], where
        # packed only where Caffe asks for it
        packed = f.GetOptions().packed if f.GetOptions().HasField("packed") else False
        assert packed == (label == "pk"), where
        assert f.is_packed == (label == "pk"), where
        if tname in SCALARS:
            assert f.type == SCALARS[tname], where
        else:
            nested, top = _resolve(msg_name, tname)
            if f.type == FD.TYPE_MESSAGE:
                assert f.message_type.full_name in (nested, top), where
                ref = f.message_type.full_name
            else:
                assert f.type == FD.TYPE_ENUM, where
                ref = f.enum_type.full_name
                assert ref in (nested, top), where
            # nested scope wins over top level, as in protoc
            nested_exists = (nested[len("caffe."):] in EXPECTED_MESSAGES
                             or nested[len("caffe."):] in EXPECTED_ENUMS)
            assert ref == (nested if nested_exists else top), where
        _check_default(f, default, where)


def _check_default(f, default, where):
    if default is None:
        assert not f.has_default_value, f"{where} has unexpected default"
        return
    assert f.has_default_value, f"{where} lacks default {default}"
    got = f.default_value
    if f.type == FD.TYPE_STRING:
        want = "" if default == '""' else default
        assert got == want, where
    elif f.type == FD.TYPE_BOOL:
        assert got is (default == "true"), where
    elif f.type == FD.TYPE_ENUM:
        assert got == f.enum_type.values_by_name[default].number, where
    elif f.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        assert np.float32(got) == np.float32(float(default)), where
        assert math.isclose(got, float(default), rel_tol=1e-6), where
    else:
        assert got == int(default), where


def test_enum_set():
    found = {e.full_name for e in _all_enums()}
    assert found == {f"caffe.{n}" for n in EXPECTED_ENUMS}
    assert len(found) == 26


@pytest.mark.parametrize("enum_name", sorted(EXPECTED_ENUMS))
def test_enum_values(enum_name):
    owner, _, short = enum_name.rpartition(".")
    if owner:
        desc = POOL_FD.message_types_by_name[owner].enum_types_by_name[short]
    else:
        desc = POOL_FD.enum_types_by_name[short]
    want = dict(tok.split("=") for tok in EXPECTED_ENUMS[enum_name])
    assert {v.name: v.number for v in desc.values} == {k: int(v) for k, v in want.items()}
    # declaration order (first value is the proto2 implicit default)
    assert [v.name for v in desc.values] == list(want)


def test_known_facts():
    p = caffe_pb2
    L = p.LayerParameter.DESCRIPTOR.fields_by_name
    assert L["convolution_param"].number == 106
    assert L["pooling_param"].number == 121
    assert L["inner_product_param"].number == 117
    assert L["transform_param"].number == 100
    assert p.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert p.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2

    s = p.SolverParameter()
    assert s.type == "SGD"
    assert s.solver_mode == p.SolverParameter.GPU
    assert s.snapshot_format == p.SolverParameter.BINARYPROTO
    assert s.random_seed == -1
    assert s.regularization_type == "L2"
    assert s.average_loss == 1 and s.iter_size == 1
    assert s.test_initialization is True and s.snapshot_after_train is True
    assert s.clip_gradients == -1
    assert np.float32(s.momentum2) == np.float32(0.999)
    assert np.float32(s.delta) == np.float32(1e-8)

    assert p.LossParameter().normalization == p.LossParameter.VALID
    assert not p.LossParameter().HasField("normalize")
    assert p.PoolingParameter().pool == p.PoolingParameter.MAX
    assert p.PoolingParameter().stride == 1
    assert p.PoolingParameter().round_mode == p.PoolingParameter.CEIL
    f = p.FillerParameter()
    assert f.type == "constant" and f.value == 0 and f.std == 1 and f.max == 1
    assert f.sparse == -1 and f.variance_norm == p.FillerParameter.FAN_IN
    assert p.V1LayerParameter.CONVOLUTION == 4
    assert p.V1LayerParameter.SOFTMAX_LOSS == 21
    assert p.V1LayerParameter.DECONVOLUTION == 39
    assert p.Datum().encoded is False
    assert p.NetState().phase == p.TEST
    assert p.TRAIN == 0 and p.TEST == 1
    c = p.ConvolutionParameter()
    assert c.bias_term is True and c.group == 1 and c.axis == 1
    assert c.engine == p.ConvolutionParameter.DEFAULT
    assert len(c.kernel_size) == 0  # repeated, no default
    assert p.ParamSpec().lr_mult == 1.0 and p.ParamSpec().decay_mult == 1.0
    assert p.DataParameter().backend == p.DataParameter.LEVELDB
    assert p.DataParameter().prefetch == 4
    assert p.LRNParameter().local_size == 5
    assert np.float32(p.LRNParameter().beta) == np.float32(0.75)
    assert p.DropoutParameter().dropout_ratio == 0.5
    assert p.EltwiseParameter().operation == p.EltwiseParameter.SUM
    assert p.HingeLossParameter().norm == p.HingeLossParameter.L1
    assert p.ReductionParameter().operation == p.ReductionParameter.SUM
    assert p.CropParameter().axis == 2
    assert p.WindowDataParameter().crop_mode == "warp"
    assert is_required(p.ClipParameter.DESCRIPTOR.fields_by_name["min"])


def test_packed_wire_format():
    """BlobProto.data is packed: one length-delimited record (tag 0x2a)."""
    b = caffe_pb2.BlobProto()
    b.data.extend([1.0, 2.0, 3.0])
    raw = b.SerializeToString()
    assert raw[0] == (5 << 3 | 2) and raw[1] == 12 and len(raw) == 14
    s = caffe_pb2.BlobShape(dim=[2, 3])
    assert s.SerializeToString() == b"\x0a\x02\x02\x03"
