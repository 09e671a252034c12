"""Getting the MNIST (or Fashion-MNIST) IDX files: mirrors, MD5 checks, resume, local copies.

A file is only ever put in place under its final name after its checksum
matched: downloads go to ``NAME.part`` (resumed with an HTTP Range request
when a previous attempt left one), local copies too, and a bad checksum
deletes the part file and moves on to the next mirror. So a file with the
final name is always a good one.

Checksums: the published MD5 of each ``.gz`` file, plus the MD5 of the
uncompressed contents where we know it (so gunzipped copies and re-compressed
ones, such as Debian's ``dataset-fashion-mnist`` package, are accepted). The
uncompressed MD5s were computed from the MNIST test files (examples/mnist/mnist_test_set)
and from Debian's Fashion-MNIST package. For a raw (gunzipped) MNIST training
file no uncompressed MD5 is known: it is accepted after its IDX header and
size check out, and we say so.
"""
import hashlib
import os
import shutil
import urllib.error
import urllib.request

from netspec.errors import DataError
from netspec.io import file_digest
from solvers.data.idx import read_bytes, parse_idx

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SPLIT_FILES = {"train": FILES[:2], "test": FILES[2:]}
ITEMS = {"train": 60000, "t10k": 10000}

DATASETS = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        "gz_md5": {
            "train-images-idx3-ubyte": {"f68b3c2dcbeaaa9fbdd348bbdeb94873"},
            "train-labels-idx1-ubyte": {"d53e105ee54ea40749a09fcbcd1e9432"},
            "t10k-images-idx3-ubyte": {"9fb629c4189551a2d022fa330f9573f3"},
            "t10k-labels-idx1-ubyte": {"ec29112dd5afa0611ce80d1b7f02629c"},
        },
        "raw_md5": {
            "t10k-images-idx3-ubyte": {"2646ac647ad5339dbf082846283269ea"},
            "t10k-labels-idx1-ubyte": {"27ae3e4e09519cfbb04c329615203637"},
        },
        "system_dirs": [],
    },
    "fashion-mnist": {
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ],
        "gz_md5": {  # published by Zalando, then Debian's re-compressed files
            "train-images-idx3-ubyte": {"8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"},
            "train-labels-idx1-ubyte": {"25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"},
            "t10k-images-idx3-ubyte": {"bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"},
            "t10k-labels-idx1-ubyte": {"bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"},
        },
        "raw_md5": {
            "train-images-idx3-ubyte": {"f4a8712d7a061bf5bd6d2ca38dc4d50a"},
            "train-labels-idx1-ubyte": {"9018921c3c673c538a1fc5bad174d6f9"},
            "t10k-images-idx3-ubyte": {"8181f5470baa50b63fa0f6fddb340f0a"},
            "t10k-labels-idx1-ubyte": {"15d484375f8d13e6eb1aabb0c3f46965"},
        },
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
    },
}

OFFLINE_HELP = {  # flags both get_mnist.py and create_mnist.py have; the caller adds its own
    "mnist": ("Copy the files from a local folder instead: --from DIR (DIR holding the four "
              "*-ubyte[.gz] files). For a full 60,000-image set offline, install Debian's "
              "package (apt-get install dataset-fashion-mnist) and use --dataset fashion-mnist."),
    "fashion-mnist": ("Install Debian's package, which puts the files in "
                      "/usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist), "
                      "or copy them from a local folder with --from DIR."),
}


def md5_of(path):
    return file_digest(path, "md5")


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def verify(path, name, dataset="mnist"):
    """Check a (gz or raw) copy of file ``name``; returns how it was checked, DataError if bad."""
    spec = DATASETS[dataset]
    if _is_gzip(path):
        digest = md5_of(path)
        if digest in spec["gz_md5"][name]:
            return "md5 %s" % digest
    try:
        raw = read_bytes(path)
    except DataError:
        raise DataError("%s fails the MD5 check for %s (md5 %s, expected %s); it does not even "
                        "decompress: corrupt or incomplete"
                        % (path, name, md5_of(path), " or ".join(sorted(spec["gz_md5"][name])))) from None
    digest = hashlib.md5(raw).hexdigest()
    if digest in spec["raw_md5"].get(name, ()):
        return "md5 %s of the uncompressed data" % digest
    if name in spec["raw_md5"] or _is_gzip(path):
        got = ("md5 %s" % md5_of(path)) if _is_gzip(path) else ("uncompressed md5 %s" % digest)
        raise DataError("%s fails the MD5 check for %s (%s): corrupt, incomplete or another "
                        "data set" % (path, name, got))
    arr = parse_idx(raw, path)
    expected = ITEMS[name.split("-")[0]]
    if arr.shape[0] != expected:
        raise DataError("%s holds %d items; %s has %d" % (path, arr.shape[0], name, expected))
    return "IDX header and size (no checksum is known for the uncompressed file)"


def find_local(directory, name):
    """The path of ``name`` in ``directory``: NAME.gz, NAME, or None."""
    for candidate in (name + ".gz", name):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _target(out_dir, name, src):
    return os.path.join(out_dir, name + (".gz" if _is_gzip(src) else ""))


def copy_verified(src, out_dir, name, dataset):
    """Verify ``src`` and copy it to ``out_dir`` through a part file; returns the final path."""
    how = verify(src, name, dataset)
    dest = _target(out_dir, name, src)
    if os.path.abspath(src) != os.path.abspath(dest):
        part = dest + ".part"
        shutil.copyfile(src, part)
        os.replace(part, dest)
    return dest, how


def fetch(url, dest, name, dataset="mnist", timeout=30, log=print):
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename. DataError if bad."""
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "caffe-toolkit get_mnist"})
    if have:
        request.add_header("Range", "bytes=%d-" % have)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part may be complete
            response = None
        else:
            raise
    if response is not None:
        with response:
            resumed = have and response.status == 206
            if have and not resumed:
                log("  %s: the server ignored the resume request; downloading from the start" % url)
            with open(part, "ab" if resumed else "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
    try:
        how = verify(part, name, dataset)
    except DataError:
        os.unlink(part)  # never keep bytes that failed the check
        raise
    os.replace(part, dest)
    return how


def get_dataset(out_dir, dataset="mnist", from_dir=None, mirrors=None, splits=("train", "test"),
                timeout=30, log=print, test_only=None):
    """Put verified copies of the wanted files in ``out_dir``; returns {name: path}.

    Order: a good copy already in ``out_dir``; ``from_dir`` (only there, when
    given); the system directories (Debian's package); the mirrors in turn.
    ``test_only`` is how the calling command asks for the test set alone
    (its own flag, e.g. "--split test"): errors name it, so the advice fits
    the command the user typed.
    """
    alone = (" If you only have the test set (t10k-*), ask for it alone with %s." % test_only
             if test_only else "")
    if dataset not in DATASETS:
        raise DataError("unknown dataset %r; choose one of %s" % (dataset, ", ".join(DATASETS)))
    spec = DATASETS[dataset]
    mirrors = list(spec["mirrors"] if mirrors is None else mirrors)
    os.makedirs(out_dir, exist_ok=True)
    names = [n for s in splits for n in SPLIT_FILES[s]]
    result = {}
    unreachable = {}  # mirror -> why: not asked again for the next files
    for name in names:
        existing = find_local(out_dir, name)
        if existing:
            try:
                how = verify(existing, name, dataset)
                log("%s: already there (%s)" % (existing, how))
                result[name] = existing
                continue
            except DataError as e:
                log("%s: %s; fetching it again" % (existing, e))
                os.unlink(existing)
        if from_dir is not None:
            src = find_local(from_dir, name)
            if src is None:
                there = sorted(os.listdir(from_dir)) if os.path.isdir(from_dir) else "no such folder"
                raise DataError("%s (or %s.gz) is not in %s (it holds: %s).%s"
                                % (name, name, from_dir, there, alone))
            result[name], how = copy_verified(src, out_dir, name, dataset)
            log("%s: copied from %s (%s)" % (result[name], src, how))
            continue
        for sysdir in spec["system_dirs"]:
            src = find_local(sysdir, name)
            if src is not None:
                result[name], how = copy_verified(src, out_dir, name, dataset)
                log("%s: copied from %s (%s)" % (result[name], src, how))
                break
        if name in result:
            continue
        errors = []
        for base in mirrors:
            url = base + name + ".gz"
            if base in unreachable:
                errors.append("%s: skipped, %s" % (url, unreachable[base]))
                continue
            dest = os.path.join(out_dir, name + ".gz")
            log("downloading %s" % url)
            try:
                how = fetch(url, dest, name, dataset, timeout, log)
            except urllib.error.HTTPError as e:  # the server answered: try it again for other files
                errors.append("%s: HTTP %s %s" % (url, e.code, e.reason))
                continue
            except (urllib.error.URLError, OSError) as e:  # no connection at all
                unreachable[base] = "unreachable (%s)" % (getattr(e, "reason", None) or e)
                errors.append("%s: %s" % (url, getattr(e, "reason", None) or e))
                continue
            except DataError as e:
                errors.append("%s: %s" % (url, e))
                continue
            log("%s: ok (%s)" % (dest, how))
            result[name] = dest
            break
        if name not in result:
            raise DataError("could not get %s from any mirror:\n  %s\n%s%s"
                            % (name, "\n  ".join(errors) or "(no mirrors)", OFFLINE_HELP[dataset], alone))
    return result
