"""The NetSpec programs of the golden set must give what pycaffe printed for them."""
import warnings
from pathlib import Path

import pytest
from google.protobuf import text_format

from netspec import NetSpec, TEST, TRAIN, caffe_pb2, layers as L, params as P, to_proto

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "netspec"
CASES = ["anonymous_tops", "caffenet_like", "lenet_test", "lenet_train",
         "multi_top_and_repeated", "python_layer_and_state_rules", "solver_from_caffe_pb2"]


def run_program(path):
    """Run a golden program with the names pycaffe's users import; return its ``result``."""
    namespace = dict(L=L, P=P, NetSpec=NetSpec, to_proto=to_proto, caffe_pb2=caffe_pb2,
                     TRAIN=TRAIN, TEST=TEST)
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["result"]


@pytest.mark.parametrize("case", CASES)
def test_golden_netspec_program(case):
    if not GOLDEN.is_dir():
        pytest.skip("golden data folder %s is absent" % GOLDEN)
    program = GOLDEN / (case + ".py")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of Caffe's own examples deserves a warning
        result = run_program(program)
    expected = type(result)()
    text_format.Parse((GOLDEN / (case + ".prototxt")).read_text(), expected)
    assert result == expected, "%s differs from pycaffe:\n%s" % (case, text_format.MessageToString(result))
    # what we print parses back to the same message
    again = type(result)()
    text_format.Parse(str(result), again)
    assert again == expected


def test_golden_set_is_complete():
    if not GOLDEN.is_dir():
        pytest.skip("golden data folder %s is absent" % GOLDEN)
    assert sorted(p.stem for p in GOLDEN.glob("*.py")) == sorted(CASES)
