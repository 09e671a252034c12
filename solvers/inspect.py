"""What a Net, a Blob or a Solver looks like at the IPython prompt or in Jupyter.

Typing ``solver.net`` in a notebook should answer the questions one asks
while training: which layers, what shapes flow between them, how many
parameters, where the numbers stand. These functions build that summary
as plain text (``__repr__``) and as an HTML table (``_repr_html_``); the
pycaffe facade (``solvers.caffe``) attaches them to the classes.
"""
import html

import numpy as np

from solvers.backend import to_numpy


# -- numbers ---------------------------------------------------------------------

def array_stats(array):
    """min, max, mean and std of an array (NumPy or CuPy) as floats; None when empty."""
    a = to_numpy(array)
    if a.size == 0:
        return None
    a = a.astype(np.float64, copy=False)
    return {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std())}


def _fmt_stats(stats):
    if stats is None:
        return "empty"
    return "min %.4g  max %.4g  mean %.4g  std %.4g" % (stats["min"], stats["max"], stats["mean"],
                                                         stats["std"])


def _shape(shape):
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _table_text(header, rows):
    """Left-aligned columns; the last column (counts) right-aligned. Cells may hold several lines."""
    split = [[str(c).split("\n") for c in row] for row in [header] + rows]
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(header))]
    out = []
    for n, row in enumerate(split):
        height = max(len(cell) for cell in row)
        for k in range(height):
            cells = [cell[k] if k < len(cell) else "" for cell in row]
            parts = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])] + [cells[-1].rjust(widths[-1])]
            out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _table_html(caption, header, rows, footer=None):
    esc = html.escape
    parts = ["<table>", "<caption style='text-align:left'>%s</caption>" % esc(caption), "<thead><tr>"]
    parts += ["<th style='text-align:left'>%s</th>" % esc(h) for h in header]
    parts.append("</tr></thead><tbody>")
    for row in rows + ([footer] if footer else []):
        parts.append("<tr>" + "".join("<td style='text-align:left'>%s</td>" % esc(str(c)).replace("\n", "<br>")
                                      for c in row) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


# -- Net ---------------------------------------------------------------------------

def net_rows(net):
    """One dict per layer: name, type, tops [(name, shape)], params [shape], count, shared.

    ``count`` counts the parameter values the layer owns; a parameter
    shared from another layer (``param { name: ... }``) is listed but not
    counted again, so the counts add up to the net's total.
    """
    owners = getattr(net, "_param_owners", None)
    param_ids = getattr(net, "_param_ids", None)
    rows = []
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        tops = [(top, tuple(net.blobs[top].shape) if top in net.blobs else ())
                for top in net.top_names[name]]
        shapes, count, shared = [], 0, []
        for j, blob in enumerate(layer.blobs):
            shapes.append(tuple(blob.shape))
            is_shared = bool(owners is not None and param_ids is not None
                             and owners[param_ids[i][j]] >= 0)
            shared.append(is_shared)
            if not is_shared:
                count += int(blob.count)
        rows.append({"layer": name, "type": layer.type, "tops": tops, "params": shapes,
                     "count": count, "shared": shared})
    return rows


def net_total_params(net):
    return sum(row["count"] for row in net_rows(net))


def _phase_name(net):
    from netspec import caffe_pb2
    try:
        return caffe_pb2.Phase.Name(net.phase)
    except (ValueError, AttributeError):
        return "?"


def _net_cells(row):
    tops = "\n".join("%s %s" % (name, _shape(shape)) for name, shape in row["tops"])
    params = ", ".join(_shape(s) + (" shared" if sh else "") for s, sh in zip(row["params"], row["shared"]))
    return [row["layer"], row["type"], tops, params, "{:,}".format(row["count"]) if row["params"] else ""]


def _net_caption(net, rows):
    return "Net %r (%s): %d layers, %d blobs, %s learnable parameters" % (
        net.name, _phase_name(net), len(rows), len(net.blobs), "{:,}".format(sum(r["count"] for r in rows)))


NET_HEADER = ["layer", "type", "tops (shape)", "params (shape)", "count"]


def net_summary(net):
    """The net as a text table: layer, type, tops with shapes, parameter shapes, counts, total."""
    rows = net_rows(net)
    cells = [_net_cells(r) for r in rows]
    total = ["total", "", "", "", "{:,}".format(sum(r["count"] for r in rows))]
    return _net_caption(net, rows) + "\n" + _table_text(NET_HEADER, cells + [total])


def net_html(net):
    rows = net_rows(net)
    total = ["total", "", "", "", "{:,}".format(sum(r["count"] for r in rows))]
    return _table_html(_net_caption(net, rows), NET_HEADER, [_net_cells(r) for r in rows], total)


# -- Blob --------------------------------------------------------------------------

def blob_summary(blob):
    """Shape, dtype and min/max/mean/std of data and diff."""
    dtype = getattr(blob.data, "dtype", "float32")
    return "Blob %s %s\n  data: %s\n  diff: %s" % (_shape(blob.shape), dtype, _fmt_stats(array_stats(blob.data)),
                                                 _fmt_stats(array_stats(blob.diff)))


def blob_html(blob):
    dtype = getattr(blob.data, "dtype", "float32")
    rows = []
    for what, arr in (("data", blob.data), ("diff", blob.diff)):
        s = array_stats(arr)
        rows.append([what] + (["%.4g" % s[k] for k in ("min", "max", "mean", "std")] if s else ["", "", "", ""]))
    return _table_html("Blob %s %s" % (_shape(blob.shape), dtype), ["", "min", "max", "mean", "std"], rows)


# -- Solver ------------------------------------------------------------------------

def test_scores(solver):
    """[(test net index, output name, mean, iteration tested)] from the last test of each test net."""
    out = []
    for i, net in enumerate(getattr(solver, "test_nets", [])):
        scores = list(solver.mean_scores[i]) if i < len(getattr(solver, "mean_scores", [])) else []
        tested = getattr(solver, "tested_at", [])
        at = tested[i] if i < len(tested) else None
        k = 0
        for name in net.outputs:
            for j in range(max(int(net.blobs[name].count), 1)):
                if k < len(scores):
                    out.append((i, name if net.blobs[name].count <= 1 else "%s[%d]" % (name, j), scores[k], at))
                k += 1
    return out


def solver_info(solver):
    """Type, iteration, learning rate, last and smoothed loss, test scores."""
    from solvers.lr_policy import learning_rate
    p = solver.param
    try:
        rate = float(learning_rate(p, solver.iter))   # the rate the next update will use
    except Exception:
        rate = float("nan")
    losses = getattr(solver, "losses", [])
    return {"type": p.type or type(solver).__name__.replace("Solver", ""),
            "iter": int(solver.iter), "max_iter": int(p.max_iter), "lr": rate, "lr_policy": p.lr_policy,
            "loss": losses[-1] if losses else None, "smoothed_loss": getattr(solver, "smoothed_loss", None),
            "net": solver.net.name, "tests": test_scores(solver)}


def _solver_rows(info):
    rows = [["type", info["type"]], ["iteration", "%d of %d" % (info["iter"], info["max_iter"])],
            ["learning rate", "%.6g (%s)" % (info["lr"], info["lr_policy"])],
            ["last loss", "-" if info["loss"] is None else "%.6g" % info["loss"]]]
    if info["loss"] is not None and info["smoothed_loss"] is not None:
        rows.append(["smoothed loss", "%.6g" % info["smoothed_loss"]])
    for i, name, value, at in info["tests"]:
        when = "" if at is None else " (iteration %d)" % at
        rows.append(["test net #%d %s" % (i, name), "%.6g%s" % (value, when)])
    return rows


def solver_summary(solver):
    info = solver_info(solver)
    lines = ["%sSolver on net %r" % (info["type"], info["net"])]
    lines += ["  %s: %s" % (k, v) for k, v in _solver_rows(info)]
    return "\n".join(lines)


def solver_html(solver):
    info = solver_info(solver)
    return _table_html("%sSolver on net %r" % (info["type"], info["net"]), ["", ""], _solver_rows(info))
