#!/usr/bin/env python
"""Real Caffe nets (../shared/golden/zoo): ms per batch and peak RSS, beside PyTorch and Caffe.

    python bench/zoo.py [--nets bvlc_alexnet,resnet50] [--repeat 5] [--warmup 1] [--threads N]
                        [--case-batch] [--no-torch]

For each net, in a fresh process of its own (so its peak RSS is its own):
build the case as the zoo README says (tests/zoo_cases.py; files cached
outside the repository), run it once at the case's batch and assert that
every golden key still matches Caffe's numbers (rel 1e-4, the cases.json
exceptions aside) -- speed never at the price of the numbers; then time the
forward pass (deploy nets) or forward + backward (train nets) at the batch
the issue's Caffe figures were measured at (--case-batch: the case's own).
Printed beside it: the same net in PyTorch CPU (bench/torch_ref.py, a
generic translation of our built net; its output is checked against ours),
measured in the same run with the same thread count, in its own process,
and Caffe 1.0's figures recorded in issue 11 (OpenBLAS, 1 thread, a quiet
2-core machine) -- those are recorded references, not measured here, so
they mean something only when this runs on that kind of machine with
--threads 1.

Figures are medians of --repeat runs after --warmup; a busy machine inflates
both ours and PyTorch's, so read the ratio ours / PyTorch.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import numpy as np  # noqa: E402

# Issue 11's table: (batch, what was timed, this toolkit then, Caffe 1.0) in ms per batch, and Caffe's
# peak RSS in MB where recorded. Batch None: the issue did not say; the case's batch is used.
RECORDED = {
    "fcn32s_voc_train": dict(batch=1, ours=3723, caffe=2215, caffe_rss=1815),
    "fcn_alexnet_voc_train": dict(batch=1, ours=752, caffe=253),
    "bvlc_alexnet": dict(batch=10, ours=143, caffe=106, caffe_rss=665),
    "bvlc_googlenet": dict(batch=10, ours=214, caffe=189),
    "resnet50": dict(batch=1, ours=370, caffe=314),
    "mobilenet_v1": dict(batch=None, ours=112, caffe=99),
    "vgg16": dict(batch=1, caffe_rss=1303),
}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n):
    from solvers import threads
    if n:
        threads.set_num_threads(n, where="--threads")
    return threads.apply_default() or threads.usable_cores()


def feed(net, case_id, batch):
    """The case's inputs; at another batch, the images repeated (labels too)."""
    import zoo_cases
    _, _, inputs = zoo_cases.case_files(case_id)
    with np.load(str(inputs)) as f:
        arrays = {k: f[k] for k in f.files}
    if batch:
        for k, a in arrays.items():
            arrays[k] = np.resize(a, (batch,) + a.shape[1:]).astype(np.float32)
            net.blobs[k].reshape(arrays[k].shape)
        net.reshape()
    for k, a in arrays.items():
        net.blobs[k].data[...] = a
    return arrays


def child_check(case_id, batch, repeat, warmup, threads):
    """The golden check at the case's batch (in a process of its own: comparing makes float64
    copies of the blobs, which would count in the timed process's peak RSS)."""
    import zoo_cases
    set_threads(threads)
    case = zoo_cases.load_cases()[case_id]
    net = zoo_cases.load_net(case_id)
    zoo_cases.run(net, case)
    with zoo_cases.golden(case_id) as g:
        results = zoo_cases.compare(net, case, g)
    bad = zoo_cases.failures(results)
    print(json.dumps(dict(keys=len(results), bad=[list(b) for b in bad[:5]], nbad=len(bad))))


def child_ours(case_id, batch, repeat, warmup, threads):
    """The timing at ``batch`` (0: the case's); prints one JSON line."""
    import zoo_cases
    n_threads = set_threads(threads)
    case = zoo_cases.load_cases()[case_id]
    net = zoo_cases.load_net(case_id)
    arrays = feed(net, case_id, batch) if batch else None
    last = len(net.layers) - 1
    samples = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        net.forward_from_to(0, last)
        if case["backward"]:
            net.backward_from_to(last, 0)
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    outputs = {k: np.array(net.blobs[k].data) for k in case["outputs"]}
    np.savez(os.environ["ZOO_BENCH_OUT"], **outputs)
    del arrays
    print(json.dumps(dict(ms=statistics.median(samples) * 1e3, rss=peak_rss_mb(), threads=n_threads)))


def child_torch(case_id, batch, repeat, warmup, threads):
    import torch
    import zoo_cases
    from torch_ref import NotTranslatable, TorchNet
    torch.set_num_threads(set_threads(threads))
    case = zoo_cases.load_cases()[case_id]
    net = zoo_cases.load_net(case_id)
    arrays = feed(net, case_id, batch)
    try:
        tnet = TorchNet(net, requires_grad=case["backward"])
    except NotTranslatable as e:
        print(json.dumps(dict(skip=str(e))))
        return
    del net
    inputs = {k: torch.from_numpy(a).requires_grad_(case["backward"] and k == "data") for k, a in arrays.items()}
    samples = []
    for i in range(warmup + repeat):
        for ps in tnet.params.values():
            for p in ps:
                p.grad = None
        t0 = time.perf_counter()
        if case["backward"]:
            env, loss = tnet.forward(inputs)
            loss.backward()
        else:
            with torch.no_grad():
                env, loss = tnet.forward(inputs)
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    with np.load(os.environ["ZOO_BENCH_OUT"]) as ours:
        diff = max(float(np.abs(env[k].detach().numpy() - ours[k]).max() / (np.abs(ours[k]).max() + 1e-12))
                   for k in case["outputs"])
    print(json.dumps(dict(ms=statistics.median(samples) * 1e3, check=diff, version=torch.__version__)))


def run_child(kind, case_id, args, batch, out):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--nets", case_id,
           "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--threads", str(args.threads or 0),
           "--batch", str(batch or 0)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, ZOO_BENCH_OUT=out))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(error="exit %d: %s" % (proc.returncode, " | ".join(tail)))
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default="", help="case ids separated by ',' (default: all)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="BLAS/torch threads (default: the toolkit's policy)")
    ap.add_argument("--case-batch", action="store_true", help="time at the cases' batch, not the issue's")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--child", choices=("check", "ours", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child = {"check": child_check, "ours": child_ours, "torch": child_torch}[args.child]
        child(args.nets, args.batch, args.repeat, args.warmup, args.threads)
        return 0
    import zoo_cases
    if not zoo_cases.available():
        sys.exit("bench/zoo.py: the zoo golden files are not at %s" % zoo_cases.ZOO)
    cases = zoo_cases.load_cases()
    ids = [i for i in args.nets.split(",") if i] or list(cases)
    unknown = [i for i in ids if i not in cases]
    if unknown:
        sys.exit("bench/zoo.py: unknown net(s) %s; known: %s" % (", ".join(unknown), ", ".join(cases)))
    have_torch = not args.no_torch
    # Only looked for, not imported: the children start from this process, and Linux carries a
    # process's peak RSS across exec, so a parent holding torch would raise every child's peak.
    if have_torch and importlib.util.find_spec("torch") is None:
        have_torch = False
        print("PyTorch: not installed, no in-run reference (pip install torch; never a dependency)")
    print("zoo nets: ms per batch (median of %d after %d warm-up), each net in its own process; "
          "Caffe figures recorded in issue 11 (1 thread, quiet 2-core machine), not measured here"
          % (args.repeat, args.warmup))
    head = "%-22s %-8s %5s %9s %9s %7s %9s %7s %8s %9s %s"
    print(head % ("net", "timed", "batch", "ours ms", "torch ms", "ratio", "caffe ms", "ratio", "RSS MB",
                  "caffe RSS", "notes"))
    failed = False
    out = os.path.join(zoo_cases.cache_root(), "bench_outputs.npz")
    for case_id in ids:
        case = cases[case_id]
        zoo_cases.case_files(case_id)   # built here, so the timed process's RSS is the net's own
        rec = RECORDED.get(case_id, {})
        case_batch = case["inputs"]["specs"][0][1][0]
        batch = None if args.case_batch or not rec.get("batch") else rec["batch"]
        shown_batch = batch or case_batch
        check = run_child("check", case_id, args, None, out)
        ours = run_child("ours", case_id, args, batch, out)
        notes = []
        if "error" in ours or "error" in check:
            print("%-22s ERROR %s" % (case_id, ours.get("error") or check.get("error")))
            failed = True
            continue
        if check["nbad"]:
            failed = True
            notes.append("GOLDEN MISMATCH: %d of %d keys, e.g. %s" % (check["nbad"], check["keys"], check["bad"][:2]))
        else:
            notes.append("golden: %d keys match" % check["keys"])
        theirs = run_child("torch", case_id, args, batch, out) if have_torch else {"skip": "no torch"}
        if "ms" in theirs:
            t_ms, t_ratio = "%9.1f" % theirs["ms"], "%6.2fx" % (ours["ms"] / theirs["ms"])
            notes.append("torch output rel diff %.1e" % theirs["check"])
        else:
            t_ms, t_ratio = "%9s" % "-", "%7s" % "-"
            notes.append("no torch reference: %s" % theirs.get("skip", theirs.get("error")))
        caffe_ms = rec.get("caffe") if rec.get("batch") == shown_batch or (rec.get("caffe") and not rec.get(
            "batch") and batch is None and not args.case_batch) else None
        if rec.get("caffe") and caffe_ms is None:
            notes.append("Caffe's %d ms was at batch %s" % (rec["caffe"], rec.get("batch")))
        c_ms = "%9d" % caffe_ms if caffe_ms else "%9s" % "-"
        c_ratio = "%6.2fx" % (ours["ms"] / caffe_ms) if caffe_ms else "%7s" % "-"
        c_rss = "%9d" % rec["caffe_rss"] if rec.get("caffe_rss") else "%9s" % "-"
        if rec.get("batch") is None and rec.get("caffe"):
            notes.append("Caffe's batch not recorded")
        print(head % (case_id, "fwd+bwd" if case["backward"] else "forward", shown_batch, "%9.1f" % ours["ms"],
                      t_ms, t_ratio, c_ms, c_ratio, "%8.0f" % ours["rss"], c_rss,
                      "; ".join(notes) + " (threads %d)" % ours["threads"]), flush=True)
    if failed:
        print("FAILED: a net does not match Caffe's golden outputs (or did not run)")
        return 1
    print("every net matched Caffe's golden outputs (rel 1e-4, cases.json exceptions aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
