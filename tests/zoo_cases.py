"""The model-zoo golden cases (``../shared/golden/zoo``): build, load, run and compare.

One copy of the recipe's plumbing for every user of the zoo nets: the
conformance test (tests/test_zoo_golden.py), the speed benchmark
(bench/zoo.py) and anyone else who runs a real net against Caffe's numbers.
Import it from a test as ``from zoo_cases import ...`` (pytest puts tests/ on
the path) and from elsewhere after ``sys.path.insert(0, "<root>/tests")``.

The folder's own ``make_case.py`` builds a case (edited prototxt, seeded
.caffemodel, seeded inputs); the files are written once into a cache folder
outside the repository (VGG16's weights are 550 MB), named by the SHA-1 of the
case's recipe, so a changed recipe never reuses stale files. The cache is
``$ZOO_CASES_DIR`` or ``<tmp>/zoo_cases``.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "golden" / "zoo"
TOL = 1e-4   # the README's tolerance for every key an exception does not name


def available():
    """True when the zoo golden files lie beside the checkout."""
    return (ZOO / "cases.json").is_file() and (ZOO / "make_case.py").is_file()


def make_case_module():
    """The zoo folder's make_case.py, imported (it holds the recipe and compare())."""
    if str(ZOO) not in sys.path:
        sys.path.insert(0, str(ZOO))
    import make_case
    return make_case


def load_cases():
    """{case id: its cases.json entry}, in the file's order."""
    with open(ZOO / "cases.json") as f:
        return {c["id"]: c for c in json.load(f)}


def cache_root():
    return Path(os.environ.get("ZOO_CASES_DIR") or Path(tempfile.gettempdir()) / "zoo_cases")


def _recipe_sha1(case):
    """SHA-1 of what the built files depend on: the case's entry, make_case.py and the prototxt."""
    h = hashlib.sha1(json.dumps(case, sort_keys=True).encode())
    h.update((ZOO / "make_case.py").read_bytes())
    h.update((ZOO / case["src"]["prototxt"]).read_bytes())
    return h.hexdigest()


def case_files(case_id):
    """(prototxt, caffemodel, input npz) paths of a built case, building it on first use.

    Built into a temporary folder and renamed into place, so an interrupted or
    concurrent build never leaves half-written files behind a valid name.
    """
    case = load_cases()[case_id]
    folder = cache_root() / ("%s-%s" % (case_id, _recipe_sha1(case)[:16]))
    names = [folder / (case_id + ext) for ext in (".prototxt", ".caffemodel", "_input.npz")]
    if not all(p.is_file() for p in names):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".%s-" % case_id, dir=str(folder.parent)))
        try:
            from netspec import caffe_pb2
            from netspec.io import read_net
            problems = make_case_module().make_case(case, str(tmp), caffe_pb2, read_net)
            if problems:
                raise RuntimeError("zoo case %s: %s" % (case_id, "; ".join(problems)))
            try:
                os.rename(str(tmp), str(folder))
            except OSError:   # another process finished first: keep theirs
                if not all(p.is_file() for p in names):
                    raise
        finally:
            shutil.rmtree(str(tmp), ignore_errors=True)
    return names


def golden(case_id):
    """Caffe's results for the case (an open NpzFile)."""
    return np.load(str(ZOO / (case_id + ".npz")))


def load_net(case_id):
    """The case's net in its phase, with its seeded weights and inputs in place."""
    from solvers.net import Net
    case = load_cases()[case_id]
    prototxt, weights, inputs = case_files(case_id)
    net = Net(str(prototxt), phase=case["phase"], weights=str(weights))
    with np.load(str(inputs)) as feed:
        for name in feed.files:
            net.blobs[name].data[...] = feed[name]
    return net


def run(net, case):
    """The recipe's run: forward, and for backward cases zeroed param diffs then backward."""
    loss = net.forward_from_to(0, len(net.layers) - 1)
    if case["backward"]:
        net.clear_param_diffs()
        net.backward_from_to(len(net.layers) - 1, 0)
    return loss


def ours(net, key):
    """Our array for a golden key's NAME (``data/BLOB``, ``param/LAYER/J``, ``diff/BLOB``,
    ``pdiff/LAYER/J``), or None when the net has no such blob."""
    kind, _, rest = key.partition("/")
    if kind in ("data", "diff"):
        blob = net.blobs.get(rest)
        return None if blob is None else (blob.data if kind == "data" else blob.diff)
    layer, _, j = rest.rpartition("/")
    blobs = net.params.get(layer)
    if blobs is None or int(j) >= len(blobs):
        return None
    return blobs[int(j)].data if kind == "param" else blobs[int(j)].diff


def golden_keys(g):
    """Every NAME the golden npz holds (the part after ``stat:``)."""
    return [k[len("stat:"):] for k in g.files if k.startswith("stat:")]


def tolerances(net, case):
    """{key: tolerance} for the keys an exception of cases.json covers (tie_pools/tol_bwd);
    every other key is held to TOL."""
    pools = case.get("tie_pools") or []
    if not pools:
        return {}
    keys = make_case_module().upstream_of(net, pools)
    return {k: float(case["tol_bwd"]) for k in keys}


def compare(net, case, g=None, keys=None):
    """[(key, rel err, tolerance)] for every golden key (or those given), as make_case.compare
    computes the error; a key our net lacks gets an infinite error."""
    compare_one = make_case_module().compare
    g = golden(case["id"]) if g is None else g
    tol = tolerances(net, case)
    out = []
    for key in (golden_keys(g) if keys is None else keys):
        got = ours(net, key)
        err = float("inf") if got is None else compare_one(key, np.asarray(got), g)
        out.append((key, err, tol.get(key, TOL)))
    return out


def failures(results):
    """The (key, err, tol) of ``compare`` above their tolerance."""
    return [r for r in results if not r[1] <= r[2]]
