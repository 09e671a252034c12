"""Caffe's ``caffe time`` benchmark: per-layer forward and backward times of a net.

One untimed forward and backward pass first (allocations settle), then N
iterations of every layer's forward (in order) and backward (in reverse),
each layer timed on its own; the report gives the averages in Caffe's words.
"""
import logging
import time

from netspec.errors import CaffeError

log = logging.getLogger("caffe")


def _synchronizer(net):
    """On a GPU, kernels run asynchronously: wait for them before reading the clock."""
    from solvers.backend import get_array_module
    xp = get_array_module(*[b.data for b in net.blobs.values()])
    if xp.__name__ == "cupy":
        return xp.cuda.Device().synchronize
    return lambda: None


def time_net(net, iterations=50, report=log.info):
    """Run Caffe's benchmark on ``net``; return the averages in milliseconds.

    The result holds ``forward``/``backward`` (per layer name, lists in layer
    order), ``forward_pass``, ``backward_pass``, ``forward_backward`` and
    ``total`` (all ms; the first four are per iteration).
    """
    if iterations < 1:
        raise CaffeError("--iterations must be at least 1, got %d" % iterations)
    report("Performing Forward")
    loss = net.forward_from_to(0, len(net.layers) - 1)
    report("Initial loss: %g" % loss)
    report("Performing Backward")
    net.backward_from_to(len(net.layers) - 1, 0)

    sync = _synchronizer(net)
    n = len(net.layers)
    fwd_layer, bwd_layer = [0.0] * n, [0.0] * n
    fwd_total = bwd_total = 0.0
    clock = time.perf_counter
    sync()
    report("*** Benchmark begins ***")
    report("Testing for %d iterations." % iterations)
    start_all = clock()
    for it in range(iterations):
        start_iter = clock()
        for i, (layer, bottom, top) in enumerate(zip(net.layers, net.bottom_vecs, net.top_vecs)):
            t = clock()
            layer.reshape(bottom, top)      # Caffe's Layer::Forward reshapes first
            layer.forward(bottom, top)
            sync()
            fwd_layer[i] += clock() - t
        mid = clock()
        fwd_total += mid - start_iter
        for i in range(n - 1, -1, -1):     # every layer, as caffe time does
            t = clock()
            net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            sync()
            bwd_layer[i] += clock() - t
        end = clock()
        bwd_total += end - mid
        report("Iteration: %d forward-backward time: %g ms." % (it + 1, (end - start_iter) * 1e3))
    total = clock() - start_all

    ms = lambda seconds: seconds * 1e3 / iterations  # noqa: E731
    report("Average time per layer: ")
    for i, name in enumerate(net.layer_names):
        report("%10s\tforward: %g ms." % (name, ms(fwd_layer[i])))
        report("%10s\tbackward: %g ms." % (name, ms(bwd_layer[i])))
    report("Average Forward pass: %g ms." % ms(fwd_total))
    report("Average Backward pass: %g ms." % ms(bwd_total))
    report("Average Forward-Backward: %g ms." % ms(total))
    report("Total Time: %g ms." % (total * 1e3))
    report("*** Benchmark ends ***")
    return {
        "forward": [ms(t) for t in fwd_layer], "backward": [ms(t) for t in bwd_layer],
        "layers": list(net.layer_names), "forward_pass": ms(fwd_total), "backward_pass": ms(bwd_total),
        "forward_backward": ms(total), "total": total * 1e3,
    }
