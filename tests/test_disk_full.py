"""A full disk while snapshotting: a named error saying so and where, and no half-written file.

Needs a small tmpfs (``mount -t tmpfs -o size=1m``): root in a machine or
container that allows mounting. Elsewhere the test is skipped with the reason.
"""
import os
import subprocess

import pytest

from solvers import cli
from solvers.snapshot import read_state

from helpers import caffemodel_params, digits_net, make_digits_lmdb

NET = digits_net(source="../digits")

SOLVER = """net: "../net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: %d
snapshot: 2
snapshot_prefix: "tiny"
snapshot_format: %s
random_seed: 3
"""


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip("cannot mount a small tmpfs to fill up here: %s" % e)
    if res.returncode != 0:
        pytest.skip("cannot mount a small tmpfs to fill up here (needs root and a machine or container "
                    "that allows mount): %s" % res.stderr.strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill(directory):
    """Write a filler file until the file system says it is full."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_on_a_full_disk_is_a_named_error_and_leaves_whole_files(small_disk, tmp_path, fmt,
                                                                          monkeypatch, capsys):
    if fmt == "HDF5":
        pytest.importorskip("h5py", reason="the HDF5 case needs h5py (pip install h5py)")
    make_digits_lmdb(tmp_path / "digits", n=30, seed=2)
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(small_disk)
    ext = ".h5" if fmt == "HDF5" else ""
    (small_disk / "solver.prototxt").write_text(SOLVER % (2, fmt))
    assert cli.main(["train", "--solver", "solver.prototxt"]) == 0
    model, state = "tiny_iter_2.caffemodel" + ext, "tiny_iter_2.solverstate" + ext
    before = {name: (small_disk / name).read_bytes() for name in (model, state, state + ".json")}
    _fill(small_disk)
    (small_disk / "solver.prototxt").write_text(SOLVER % (4, fmt))
    capsys.readouterr()
    status = cli.main(["train", "--solver", "solver.prototxt", "--snapshot", state])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "No space left on device" in err and "tiny_iter_4" in err and "Traceback" not in err
    names = set(os.listdir(small_disk))
    assert not [n for n in names if n.startswith(".")], names          # no temporaries left
    for name in names & {"tiny_iter_4.caffemodel" + ext, "tiny_iter_4.solverstate" + ext}:
        (read_state if "solverstate" in name else _load_model)(small_disk / name)   # whole if there
    assert "tiny_iter_4.solverstate" + ext not in names
    for name, data in before.items():
        assert (small_disk / name).read_bytes() == data                 # the older snapshot is intact


def _load_model(path):
    if str(path).endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            assert "data" in f
    else:
        caffemodel_params(path)
