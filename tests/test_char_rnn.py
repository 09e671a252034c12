"""The char-RNN workflow (examples/char_rnn): text -> HDF5 sequences -> nets -> training -> samples.

Tiny configurations throughout; the full-size run is the README's command.
"""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from netspec.errors import DataError
from solvers import cli
from solvers.data.char_sequences import (Vocabulary, convert_text, read_text, read_vocabulary,
                                         stream_layout, unigram_cross_entropy, write_sequences_hdf5)
from solvers.gradient_check import check_net_gradient
from solvers.net import Net

from helpers import ROOT, caffemodel_params

h5py = pytest.importorskip("h5py", reason="the char-RNN data are HDF5 files (pip install h5py)")

EXAMPLE = ROOT / "examples" / "char_rnn"


def example(name):
    spec = importlib.util.spec_from_file_location("char_rnn_" + name, EXAMPLE / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A small text with words and layout a char-RNN picks up in a few dozen iterations.
TEXT = "".join("def f%d(x):\n    return x + %d\n\n" % (i % 7, i % 5) for i in range(120))


# -- data ---------------------------------------------------------------------------------------

def test_stream_layout_continues_each_stream_row_by_row():
    ids = np.arange(23)
    data, label, cont = stream_layout(ids, streams=2, steps=3)
    assert data.shape == label.shape == cont.shape == (9, 2)   # (23 - 1) // 2 = 11 -> 9 rows, 3 batches
    np.testing.assert_array_equal(data[:, 0], np.arange(9))
    np.testing.assert_array_equal(data[:, 1], np.arange(9, 18))
    np.testing.assert_array_equal(label, data + 1)                # the target is the next character
    np.testing.assert_array_equal(cont[0], [0, 0])
    assert (cont[1:] == 1).all()
    assert data.dtype == np.float32                                # what Caffe's HDF5Data loads
    with pytest.raises(DataError, match="too short.*3 streams of 4 steps"):
        stream_layout(np.arange(10), streams=3, steps=4)


def test_convert_text_writes_what_hdf5data_and_the_generator_read(tmp_path):
    meta = convert_text(TEXT, tmp_path, streams=4, steps=10, val_fraction=0.1, source="test")
    vocab = read_vocabulary(tmp_path / "vocab.json")
    assert vocab["vocab"].chars == sorted(set(TEXT))
    assert vocab["steps"] == 10 and vocab["train"]["streams"] == 4
    with h5py.File(meta["train"]["hdf5"], "r") as f:
        data, label = np.asarray(f["data"]), np.asarray(f["label"])
        assert set(f.keys()) == {"data", "label", "cont"}
    assert data.shape[1] == 4 and data.shape[0] % 10 == 0
    split = int(len(TEXT) * 0.9)
    rows = data.shape[0]
    assert vocab["vocab"].decode(data[:, 1]) == TEXT[rows:2 * rows]
    assert vocab["vocab"].decode(label[:, 1]) == TEXT[rows + 1:2 * rows + 1]
    assert (tmp_path / "train.txt").read_text().strip() == meta["train"]["hdf5"]
    ids = vocab["vocab"].encode(TEXT)
    counts = np.bincount(ids[:split], minlength=len(vocab["vocab"])) + 1.0
    want = -np.mean(np.log(counts / counts.sum())[ids[split:]])
    assert vocab["unigram_nats"] == pytest.approx(want)
    assert unigram_cross_entropy(ids[:split], ids[split:], len(vocab["vocab"])) == pytest.approx(want)


def test_hdf5data_batches_carry_each_stream_on_and_restart_with_cont_zero(tmp_path):
    meta = convert_text(TEXT, tmp_path, streams=3, steps=5)
    net = Net(_net_text(meta["train"]["list"]), phase="TRAIN")
    rows = meta["train"]["rows"]
    seen = []
    for _ in range(rows // 5 + 1):
        net.forward()
        seen.append((net.blobs["data"].data.copy(), net.blobs["cont"].data.copy()))
    assert seen[0][0].shape == (5, 3)
    whole = np.concatenate([d for d, _ in seen[:-1]])
    with h5py.File(meta["train"]["hdf5"], "r") as f:
        np.testing.assert_array_equal(whole, f["data"])
    np.testing.assert_array_equal(seen[-1][0], seen[0][0])        # wrapped to row 0 ...
    np.testing.assert_array_equal(seen[-1][1][0], [0, 0, 0])      # ... where the streams restart
    assert (np.concatenate([c for _, c in seen[1:-1]]) == 1).all()


def _net_text(source):
    path = source + ".prototxt"
    with open(path, "w") as f:
        f.write('layer { name: "d" type: "HDF5Data" top: "data" top: "cont" top: "label" '
                'hdf5_data_param { source: "%s" batch_size: 5 } }\n'
                'layer { name: "s" type: "Silence" bottom: "label" }\n' % source)
    return path


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "looks binary.*NUL bytes"),
    (b"caf\xe9 au lait\n", "not UTF-8 text: byte 3 \\(0xe9\\)"),
])
def test_bad_text_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text(path)
    done = subprocess.run([sys.executable, str(EXAMPLE / "create_char_data.py"), "--text", str(path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "create_char_data.py:" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(DataError, match="cannot read text file .*nowhere"):
        read_text(tmp_path / "nowhere.txt")


def test_a_character_outside_the_vocabulary_is_named():
    vocab = Vocabulary.of_text("abc\n")
    np.testing.assert_array_equal(vocab.encode("cab"), [3, 1, 2])
    with pytest.raises(DataError, match=r"--seed has the character '€' \(U\+20AC\) at position 2"):
        vocab.encode("ab€", what="--seed")


def test_default_corpus_is_on_this_machine_and_looks_like_python():
    text, source = example("create_char_data").default_corpus()
    assert len(text) > 300_000, source
    assert "def " in text and "class " in text and "\n    " in text and '"""' in text


# -- the nets ----------------------------------------------------------------------------------

def test_generated_nets_have_caffes_recurrent_shapes(tmp_path):
    convert_text(TEXT, tmp_path / "data", streams=4, steps=10)
    paths = example("char_rnn").write_char_rnn(tmp_path / "data", tmp_path, embed=5, hidden=6, layers=3)
    net = Net(str(paths[0]), phase="TRAIN")
    V = len(set(TEXT))
    assert net.blobs["data"].shape == (10, 4) and net.blobs["cont"].shape == (10, 4)
    assert net.blobs["embed"].shape == (10, 4, 5)
    assert [net.blobs["lstm%d" % k].shape for k in (1, 2, 3)] == [(10, 4, 6)] * 3
    assert net.blobs["logits"].shape == (10, 4, V)
    assert [b.shape for b in net.params["lstm1"]] == [(24, 5), (24,), (24, 6)]
    deploy = Net(str(paths[2]), phase="TEST")
    assert deploy.blobs["data"].shape == (1, 1) and deploy.blobs["h0_3"].shape == (1, 1, 6)
    assert deploy.blobs["prob"].shape == (1, 1, V) and "c_3" in deploy.blobs
    solver = paths[3].read_text()
    assert 'type: "Adam"' in solver and "clip_gradients: 5" in solver
    meta = read_vocabulary(tmp_path / "data" / "vocab.json")
    assert "test_iter: %d" % (meta["val"]["rows"] // 10) in solver


def test_bptt_through_the_stacked_lstm_matches_finite_differences(tmp_path):
    """Embed -> LSTM -> LSTM -> InnerProduct -> SoftmaxWithLoss: every parameter gradient against
    central differences of the loss, on sequences with resets in the middle of the batch."""
    T, N, V = 6, 3, 5
    rng = np.random.default_rng(7)
    data = rng.integers(0, V, (T, N)).astype(np.float32)
    label = rng.integers(0, V, (T, N)).astype(np.float32)
    cont = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1], [1, 1, 0]], np.float32)
    write_sequences_hdf5(tmp_path / "seq.h5", data, label, cont)
    (tmp_path / "seq.txt").write_text(str(tmp_path / "seq.h5") + "\n")
    char_rnn = example("char_rnn")
    from netspec import write_prototxt
    write_prototxt(char_rnn.char_rnn(str(tmp_path / "seq.txt"), T, V, embed=3, hidden=4, layers=2),
                   tmp_path / "net.prototxt")
    net = Net(str(tmp_path / "net.prototxt"), phase="TRAIN")
    for blobs in net.params.values():           # larger weights than the filler's, so every path counts
        for b in blobs:
            b.data[...] = rng.uniform(-0.6, 0.6, b.shape)
    result = check_net_gradient(net, stepsize=1e-3, threshold=1e-4)
    assert result.ok and result.checked == sum(b.count for bs in net.params.values() for b in bs)


# -- training, resume, sampling -----------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The workflow on TEXT with a tiny model: 120 iterations, snapshots at 60 and 120."""
    work = tmp_path_factory.mktemp("char_rnn")
    convert_text(TEXT, work / "data", streams=4, steps=20, val_fraction=0.1)
    paths = example("char_rnn").write_char_rnn(work / "data", work, embed=8, hidden=24, layers=2,
                                               base_lr=0.02, max_iter=120, test_interval=60, snapshot=60)
    log = work / "train.log"
    rc = cli.main(["train", "--solver", str(paths[3]), "--log", str(log)])
    assert rc == 0, log.read_text()[-2000:]
    return work, paths, log


def test_training_beats_the_unigram_baseline_and_report_says_so(trained, capsys):
    work, _, log = trained
    report = example("report")
    rc = report.main([str(log), "--vocab", str(work / "data" / "vocab.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    baseline = read_vocabulary(work / "data" / "vocab.json")["unigram_nats"]
    loss = float(out.split("validation loss:")[1].split()[0])
    assert loss < 0.6 * baseline, out
    assert "goal (< 60 % of the baseline): reached" in out


def test_resume_continues_the_carried_state_exactly(trained, capsys):
    """Snapshot at 60, resume to 120 with `caffe train -snapshot`: the same weights as the run without
    a stop (the LSTMs' carried state and the HDF5 position are in the snapshot's side file)."""
    work, paths, _ = trained
    straight = caffemodel_params(work / "char_rnn_iter_120.caffemodel")
    (work / "char_rnn_iter_120.caffemodel").unlink()
    from solvers.caffe_tool import main as caffe   # the `caffe` command, in Caffe's flag spelling
    rc = caffe(["train", "-solver", str(paths[3]), "-snapshot", str(work / "char_rnn_iter_60.solverstate")])
    capsys.readouterr()
    assert rc == 0
    resumed = caffemodel_params(work / "char_rnn_iter_120.caffemodel")
    for key in straight:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=str(key))
    from solvers.snapshot import side_file_path
    side = json.loads(open(side_file_path(work / "char_rnn_iter_60.solverstate")).read())
    assert np.asarray(side["train_net"]["lstm2"]["carried"]).shape == (2, 4, 24)   # h and c, N x H


def test_sampler_writes_text_from_the_vocabulary(trained):
    work, paths, _ = trained
    argv = [sys.executable, str(EXAMPLE / "sample.py"), "--weights", str(work / "char_rnn_iter_120.caffemodel"),
            "--model", str(paths[2]), "--vocab", str(work / "data" / "vocab.json"),
            "--seed", "def ", "--length", "60", "--temperature", "0.5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def ") and len(done.stdout) == 4 + 60 + 1
    assert set(done.stdout) <= set(TEXT)
    assert "return x + " in done.stdout or "def f" in done.stdout[4:]   # it learned the words
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.stdout == done.stdout                                   # --random-seed fixes the draws
    bad = subprocess.run(argv[:-4] + ["--seed", "deff \u00e9"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "not in the model's vocabulary" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_sampler_carries_the_state_like_the_training_net(trained):
    """Feeding a sequence step by step through the deploy net (expose_hidden) gives the same logits
    as the training-shaped net over the whole sequence at once."""
    work, paths, _ = trained
    sample = example("sample")
    vocab = read_vocabulary(work / "data" / "vocab.json")["vocab"]
    sampler = sample.Sampler(str(paths[2]), str(work / "char_rnn_iter_120.caffemodel"), vocab)
    ids = vocab.encode(TEXT[:20])
    stepwise = np.stack([sampler.feed(i) for i in ids])
    c = np.ones((20, 1), np.float32)
    c[0] = 0
    x = ids.astype(np.float32)[:, None]
    write_sequences_hdf5(work / "one.h5", x, x, c)
    (work / "one.txt").write_text(str(work / "one.h5") + "\n")
    from netspec import write_prototxt
    write_prototxt(example("char_rnn").char_rnn(str(work / "one.txt"), 20, len(vocab), embed=8, hidden=24,
                                                layers=2), work / "one.prototxt")
    whole = Net(str(work / "one.prototxt"), phase="TEST", weights=str(work / "char_rnn_iter_120.caffemodel"))
    whole.forward()
    np.testing.assert_allclose(stepwise, whole.blobs["logits"].data[:, 0], rtol=1e-4, atol=1e-5)
