"""Notebook representations (solvers/inspect.py) and the plot helpers (solvers/plot.py)."""
from pathlib import Path

import numpy as np
import pytest

import solvers.caffe as caffe
from solvers import inspect as insp
from solvers import plot
from solvers.blob import Blob

from helpers import png_size

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"

NET = """name: 'tiny'
layer { type: 'Input' name: 'data' top: 'data' top: 'label'
  input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } shape { dim: 4 } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { type: 'InnerProduct' name: 'ip_a' bottom: 'conv' top: 'ip_a' param { name: 'shared_w' }
  inner_product_param { num_output: 5 bias_term: false weight_filler { type: 'gaussian' std: 0.1 } } }
layer { type: 'InnerProduct' name: 'ip_b' bottom: 'conv' top: 'ip_b' param { name: 'shared_w' }
  inner_product_param { num_output: 5 bias_term: false } }
layer { type: 'Eltwise' name: 'sum' bottom: 'ip_a' bottom: 'ip_b' top: 'score' }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'score' bottom: 'label' top: 'loss' }
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    caffe.set_random_seed(7)
    return caffe.Net(str(path), caffe.TRAIN)


# -- reprs ----------------------------------------------------------------------------------

def test_net_repr_is_a_table(net):
    text = repr(net)
    lines = text.splitlines()
    # conv feeds two layers: Caffe's automatic Split layer shows up as a row too
    assert lines[0] == "Net 'tiny' (TRAIN): 7 layers, 9 blobs, 270 learnable parameters"
    assert lines[1].split() == ["layer", "type", "tops", "(shape)", "params", "(shape)", "count"]
    rows = {line.split()[0]: line for line in lines[3:] if line and not line.startswith(" ")}
    assert rows["conv"].split() == ["conv", "Convolution", "conv", "(4,", "3,", "4,", "4)", "(3,", "1,", "3,",
                                    "3),", "(3,)", "30"]
    assert rows["ip_a"].split()[-3:] == ["(5,", "48)", "240"]
    assert rows["conv_conv_0_split"].split()[:2] == ["conv_conv_0_split", "Split"]
    assert rows["ip_b"].split()[-4:] == ["(5,", "48)", "shared", "0"]   # not counted twice
    assert rows["total"].split() == ["total", "270"]
    # the second top of a layer sits on its own line under the first
    data_at = next(i for i, line in enumerate(lines) if line.startswith("data "))
    assert lines[data_at].split()[2:] == ["data", "(4,", "1,", "6,", "6)"]
    assert lines[data_at + 1].split() == ["label", "(4,)"]
    assert insp.net_total_params(net) == 270


def test_net_html(net):
    page = net._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    assert "<td style='text-align:left'>Convolution</td>" in page
    assert "data (4, 1, 6, 6)<br>label (4,)" in page
    assert "<td style='text-align:left'>total</td>" in page and ">270<" in page


def test_lenet_repr_counts_and_shapes():
    proto = GOLDEN / "lenet" / "lenet_auto_test.prototxt"
    if not proto.is_file():
        pytest.skip("golden LeNet nets missing: %s" % proto)
    from netspec.io import read_net
    param = read_net(str(proto))
    param.layer[0].data_param.source = str(GOLDEN / "lenet" / "mnist_test_lmdb")
    net = caffe.Net(param, caffe.TEST)
    text = repr(net)
    assert "431,080 learnable parameters" in text
    assert "fc1 (100, 500)" in text and "(500, 800), (500,)" in text and "400,500" in text


def test_blob_repr():
    blob = Blob((2, 3))
    blob.data[...] = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    blob.diff[...] = -1
    text = repr(blob)
    assert text.splitlines()[0] == "Blob (2, 3) float32"
    assert "data: min 1  max 6  mean 3.5  std 1.708" in text
    assert "diff: min -1  max -1  mean -1  std 0" in text
    assert "data: empty" in repr(Blob((0,)))
    page = blob._repr_html_()
    assert "<caption style='text-align:left'>Blob (2, 3) float32</caption>" in page
    assert "<td style='text-align:left'>3.5</td>" in page
    scalar = Blob(())
    assert repr(scalar).startswith("Blob () float32")


def test_solver_repr(tmp_path):
    net = tmp_path / "tiny.prototxt"
    net.write_text(NET.replace("type: 'Input' name: 'data' top: 'data' top: 'label'\n  input_param",
                               "type: 'DummyData' name: 'data' top: 'data' top: 'label'\n  dummy_data_param")
                   .replace("shape { dim: 4 } } }", "shape { dim: 4 } data_filler { type: 'gaussian' } "
                            "data_filler { type: 'constant' value: 1 } } }"))
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text("net: '%s' test_iter: 2 test_interval: 2 base_lr: 0.1 lr_policy: 'step' "
                           "gamma: 0.5 stepsize: 2 max_iter: 10 display: 0 random_seed: 3" % net)
    solver = caffe.SGDSolver(str(solver_path))
    fresh = repr(solver)
    assert fresh.splitlines()[0] == "SGDSolver on net 'tiny'"
    assert "iteration: 0 of 10" in fresh and "last loss: -" in fresh
    solver.step(3)
    text = repr(solver)
    assert "iteration: 3 of 10" in text
    assert "learning rate: 0.05 (step)" in text
    assert "last loss: %.6g" % solver.losses[-1] in text
    assert "test net #0 loss: %.6g (iteration 2)" % solver.mean_scores[0][0] in text   # the latest test
    page = solver._repr_html_()
    assert "<td style='text-align:left'>iteration</td><td style='text-align:left'>3 of 10</td>" in page


# -- plots ----------------------------------------------------------------------------------

def test_filter_grid_layout():
    data = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    grid = plot.filter_grid(data, padsize=1, padval=1.0)
    # ceil(sqrt(5)) = 3 per row, 2 rows; one pixel between cells, none after the last
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    norm = (data - data.min()) / (data.max() - data.min())
    np.testing.assert_allclose(grid[0:2, 0:3], norm[0])
    np.testing.assert_allclose(grid[0:2, 4:7], norm[1])
    np.testing.assert_allclose(grid[3:5, 0:3], norm[3])
    assert (grid[2] == 1).all() and (grid[:, 3] == 1).all()   # padding
    assert (grid[3:5, 8:11] == 1).all()                        # the empty sixth cell
    # the LeNet notebook's layout: 20 filters of 5x5, 4 rows of 5, no padding
    filters = np.random.default_rng(0).standard_normal((20, 5, 5)).astype(np.float32)
    seed = filters.reshape(4, 5, 5, 5).transpose(0, 2, 1, 3).reshape(4 * 5, 5 * 5)
    seed = (seed - seed.min()) / (seed.max() - seed.min())
    np.testing.assert_allclose(plot.filter_grid(filters, ncols=5, padsize=0), seed, rtol=1e-6)
    # conv weights N x C x H x W: 3 channels become colour, others one map per channel
    assert plot.filter_grid(np.zeros((4, 3, 5, 5)), padsize=0).shape == (10, 10, 3)
    assert plot.filter_grid(np.ones((2, 2, 5, 5)), padsize=0).shape == (10, 10)
    assert (plot.filter_grid(np.ones((2, 2, 5, 5)), padsize=0) == 0).all()   # constant: no divide by 0


def test_plot_filters_png(tmp_path):
    weights = np.random.default_rng(1).standard_normal((20, 1, 5, 5)).astype(np.float32)
    out = plot.plot_filters(weights, tmp_path / "conv1.png", size=(4, 3), dpi=50, title="conv1")
    assert png_size(out) == (200, 150)
    assert (tmp_path / "conv1.png").stat().st_size > 1000


def test_plot_images_png(tmp_path):
    digits = np.random.default_rng(2).uniform(size=(8, 1, 28, 28)).astype(np.float32)
    out = plot.plot_images(digits, tmp_path / "digits.png", labels=np.arange(8), dpi=100)
    assert png_size(out) == (960, 160)
    out = plot.plot_images(digits[:3, 0], tmp_path / "three.png", size=(3, 1), dpi=80)
    assert png_size(out) == (240, 80)


def test_plot_loss_history_png(tmp_path):
    losses = 2.3 * np.exp(-np.arange(100) / 30.0)
    out = plot.plot_loss_history(losses, tmp_path / "curve.png", test_scores=[0.1, 0.6, 0.9, 0.95],
                                 test_iters=[0, 25, 50, 75], title="Test Accuracy: 0.95", size=(6, 4), dpi=50)
    assert png_size(out) == (300, 200)
    assert (tmp_path / "curve.png").stat().st_size > 2000
    assert png_size(plot.plot_loss_history(losses, tmp_path / "loss_only.png")) == (800, 500)


def test_plot_score_history_png(tmp_path):
    scores = np.random.default_rng(3).standard_normal((50, 10))
    out = plot.plot_score_history(np.zeros((28, 28)), scores, tmp_path / "scores.png", title="digit 0", dpi=60)
    assert png_size(out) == (600, 150)


def test_plot_log_of_caffes_log(tmp_path):
    log = GOLDEN / "lenet" / "train.log"
    if not log.is_file():
        pytest.skip("golden Caffe log missing: %s" % log)
    out = plot.plot_log(str(log), tmp_path / "log.png", size=(5, 4), dpi=40)
    assert png_size(out) == (200, 160)
    assert (tmp_path / "log.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp*"))   # the atomic save leaves nothing behind


def test_training_curves_losses_share_an_axis_accuracy_has_its_own():
    train = [{"NumIters": i, "loss": 2.3 * 0.5 ** (i / 100)} for i in range(0, 1001, 100)]
    test = [{"NumIters": i, "accuracy": a, "loss": l} for i, a, l in ((0, 0.1, 2.3), (500, 0.97, 0.08),
                                                                       (1000, 0.985, 0.05))]
    fig = plot.training_curves_figure(train, test)
    try:
        loss_axis, score_axis = fig.axes
        assert [line.get_label() for line in loss_axis.get_lines()] == ["train loss", "test loss"]
        assert [line.get_label() for line in score_axis.get_lines()] == ["test accuracy"]
        assert loss_axis.get_yscale() == "log"            # 2.3 down to 0.0022: three decades
        assert score_axis.get_ylim() == (0, 1)
        legend = [t.get_text() for t in loss_axis.get_legend().get_texts()]
        assert legend == ["train loss", "test loss", "test accuracy"]
    finally:
        fig.clf()
    flat = [{"NumIters": i, "loss": 1.0 - i / 2000} for i in range(0, 1001, 100)]
    fig = plot.training_curves_figure(flat, [])
    assert fig.axes[0].get_yscale() == "linear" and len(fig.axes) == 1   # within a decade, no test
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train loss"]
