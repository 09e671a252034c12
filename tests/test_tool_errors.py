"""The tools fail with one line and a non-zero status, never a traceback: disk full, OpenCV and
liblmdb errors, out-of-range labels, a --log file that cannot be written, a net file that is
not a regular file (a FIFO would block read_net for ever)."""
import errno
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from netspec.errors import ProtoError, os_error_text
from netspec.io import read_net

from helpers import make_digits_lmdb

ROOT = Path(__file__).resolve().parents[1]


def tool(name):
    """A tools/NAME.py module, loaded from its file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tool_" + name, ROOT / "tools" / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys, prog):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prog + ": error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def images(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((8, 8, 3), 7, np.uint8))
    (tmp_path / "list.txt").write_text("a.png 1\n")
    return tmp_path


def test_label_that_does_not_fit_32_bits(images, capsys):
    (images / "big.txt").write_text("a.png 1\na.png 99999999999\n")
    status = tool("convert_imageset").main([str(images) + "/", str(images / "big.txt"), str(images / "db")])
    line = one_line_error(capsys, "convert_imageset")
    assert status == 1 and "line 2" in line and "99999999999" in line
    assert not (images / "db").exists()


def test_encode_type_opencv_cannot_write(images, capsys):
    status = tool("convert_imageset").main([str(images) + "/", str(images / "list.txt"), str(images / "db"),
                                            "--encoded", "--encode_type", "xyz"])
    line = one_line_error(capsys, "convert_imageset")
    assert status == 1 and "OpenCV" in line and "'xyz'" in line


def test_resize_too_big_to_allocate(images, capsys):
    status = tool("convert_imageset").main([str(images) + "/", str(images / "list.txt"), str(images / "db"),
                                            "--resize_height", "100000", "--resize_width", "100000"])
    line = one_line_error(capsys, "convert_imageset")
    assert status == 1 and "--resize_height 100000" in line


def test_image_mean_into_a_missing_directory(tmp_path, capsys):
    make_digits_lmdb(tmp_path / "db", 4, seed=0)
    out = tmp_path / "nowhere" / "mean.binaryproto"
    status = tool("compute_image_mean").main([str(tmp_path / "db"), str(out)])
    line = one_line_error(capsys, "compute_image_mean")
    assert status == 1 and str(out) in line and "nowhere' does not exist" in line


def test_full_disk_is_said_in_words(tmp_path, monkeypatch):
    assert os_error_text(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == \
        "no space left on device (/x/y)"
    eio = OSError(errno.EIO, "Input/output error")   # liblmdb's word for a full disk
    assert os_error_text(eio, str(tmp_path)) == "Input/output error (%s)" % tmp_path

    class Full:
        f_bavail, f_frsize = 3, 4096
    monkeypatch.setattr(os, "statvfs", lambda p: Full)
    assert os_error_text(eio, str(tmp_path)).startswith("no space left on device; the system said: "
                                                        "Input/output error")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs the right to mount, as root in a container)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a small tmpfs here (%s)" % r.stderr.decode(errors="replace").strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_convert_mnist_onto_a_full_disk(tmp_path, small_disk, capsys):
    rng = np.random.default_rng(0)
    n = 3000   # ~3 MB of records on a 1 MB disk
    img, lbl = tmp_path / "img", tmp_path / "lbl"
    img.write_bytes((2051).to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in (n, 28, 28))
                    + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    lbl.write_bytes((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(n))
    status = tool("convert_mnist").main([str(img), str(lbl), str(small_disk / "db")])
    line = one_line_error(capsys, "convert_mnist")
    assert status == 1 and "no space left on device" in line.lower() and str(small_disk / "db") in line
    assert os.listdir(small_disk) == []   # the partial database is gone


def test_log_file_on_a_full_disk_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    from solvers import cli
    make_digits_lmdb(tmp_path / "db", 16, seed=0)
    (tmp_path / "net.prototxt").write_text(
        'layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "%s" '
        'batch_size: 4 backend: LMDB } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { '
        'num_output: 4 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
        % (tmp_path / "db"))
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 5\ndisplay: 1\nsnapshot_prefix: "%s"\n'
        % (tmp_path / "net.prototxt", tmp_path / "snap"))
    status = cli.main(["train", "--solver", str(tmp_path / "solver.prototxt"), "--log", "/dev/full"])
    err = capsys.readouterr().err
    assert status == 0
    assert "Logging error" not in err and "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if "/dev/full" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("W") and "No space left on device" in warnings[0]
    assert "Iteration 5" in err or "Optimization Done" in err   # the log carried on to stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_read_net_refuses_a_fifo_instead_of_blocking(tmp_path):
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)

    def unblock():   # should read_net block after all, feed it so the test fails instead of hanging
        if not done.wait(10):
            with open(fifo, "w") as f:
                f.write('name: "fed"')
    done = threading.Event()
    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    try:
        with pytest.raises(ProtoError, match="FIFO"):
            read_net(str(fifo))
    finally:
        done.set()
    helper.join()


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
def test_read_net_refuses_devices(path):
    if not os.path.exists(path):
        pytest.skip("%s does not exist here" % path)
    with pytest.raises(ProtoError, match="character device"):
        read_net(path)


def test_solve_py_with_a_fifo_solver_exits_at_once(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    os.mkfifo(tmp_path / "solver.prototxt")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "solve.py"), str(tmp_path / "solver.prototxt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "FIFO" in r.stderr and "Traceback" not in r.stderr
