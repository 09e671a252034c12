"""Headless matplotlib figures a Caffe user draws while training: curves, filters, digits.

Everything renders with the Agg backend into PNG files, so it works on a
server or a board without a display.
"""
import os


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi):
    """Save atomically: a crash never leaves half a PNG under the real name."""
    import io
    from netspec.io import atomic_write_bytes
    ext = os.path.splitext(str(path))[1].lstrip(".") or "png"
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=ext)
    atomic_write_bytes(path, buffer.getvalue())


def _is_loss(name):
    return "loss" in name.lower()   # Caffe's convention: loss outputs are named *loss*


def _span_decades(values):
    """True when positive ``values`` span more than a factor of ten: a log axis shows them better."""
    values = [v for v in values if v is not None and v > 0]
    return bool(values) and max(values) > 10 * min(values)


def plot_training_curves(train_rows, test_rows, path, loss_key=None, test_key=None,
                         title=None, size=(8, 5), dpi=100):
    """Save ``training_curves_figure`` as a PNG; returns ``path``."""
    plt = _pyplot()
    fig = training_curves_figure(train_rows, test_rows, loss_key, test_key, title, size)
    _save(fig, path, dpi)
    plt.close(fig)
    return path


def training_curves_figure(train_rows, test_rows, loss_key=None, test_key=None, title=None, size=(8, 5)):
    """Train and test loss on one axis, the test score (accuracy) on its own right-hand axis.

    ``train_rows``/``test_rows`` are lists of dicts with ``NumIters`` (as
    ``solvers.log_parser.parse_log`` returns), or pass plain sequences via
    ``plot_loss_history``. ``loss_key`` defaults to ``loss`` (else the first
    output); ``test_key`` (the score) to ``accuracy`` when the test net has
    one, else its first output that is not a loss. The test net's loss of
    the same name joins the train loss on the loss axis, which turns
    logarithmic when the losses span more than a decade (they usually fall
    by two). One legend names every line.
    """
    plt = _pyplot()

    def outputs(rows):
        return [k for k in (rows[0] if rows else {}) if k not in ("NumIters", "Seconds", "LearningRate")]

    train_keys, test_keys = outputs(train_rows), outputs(test_rows)
    loss_key = loss_key or ("loss" if "loss" in train_keys else (train_keys[0] if train_keys else None))
    if test_key is None:
        scores = [k for k in test_keys if not _is_loss(k)]
        test_key = "accuracy" if "accuracy" in scores else (scores[0] if scores else None)
    test_loss = loss_key if loss_key in test_keys and loss_key != test_key else None
    if test_loss is None and test_key is None and test_keys:
        test_key = test_keys[0]   # a test net with losses only, named unlike the train loss
    fig, ax1 = plt.subplots(figsize=size)
    lines, plotted = [], []
    if loss_key:
        series = [r.get(loss_key) for r in train_rows]
        lines += ax1.plot([r["NumIters"] for r in train_rows], series, color="tab:blue",
                          label="train " + loss_key)
        plotted += series
    if test_loss:
        series = [r.get(test_loss) for r in test_rows]
        lines += ax1.plot([r["NumIters"] for r in test_rows], series, color="tab:orange", marker="o",
                          label="test " + test_loss)
        plotted += series
    if _span_decades(plotted):
        ax1.set_yscale("log")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss" + (" (log scale)" if _span_decades(plotted) else ""))
    if test_rows and test_key:
        ax2 = ax1.twinx()
        lines += ax2.plot([r["NumIters"] for r in test_rows], [r.get(test_key) for r in test_rows],
                          color="tab:red", marker="s", label="test " + test_key)
        ax2.set_ylabel("test %s" % test_key)
        if test_key == "accuracy" or test_key.endswith("accuracy"):
            ax2.set_ylim(0, 1)
    if lines:
        ax1.legend(lines, [line.get_label() for line in lines], loc="center right")
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    return fig


def plot_log(log_path, path, **kwargs):
    """Training curves straight from a Caffe-format log file (ours or Caffe's)."""
    from solvers.log_parser import parse_log
    train_rows, test_rows = parse_log(log_path)
    kwargs.setdefault("title", os.path.basename(str(log_path)))
    return plot_training_curves(train_rows, test_rows, path, **kwargs)


# -- filters and activations (the notebooks' vis_square) -----------------------------

def _as_maps(data):
    """N x H x W (gray) or N x H x W x 3 (colour) maps from blob-shaped data.

    N x C x H x W: C = 3 becomes colour images, C = 1 gray, any other C gives
    N*C gray maps (every channel of every filter).
    """
    import numpy as np
    from solvers.backend import to_numpy
    a = np.asarray(to_numpy(data), dtype=np.float32)
    if a.ndim == 4 and a.shape[-1] != 3:
        if a.shape[1] == 3:
            return a.transpose(0, 2, 3, 1)
        return a.reshape((-1,) + a.shape[2:])
    if a.ndim == 2:          # a single map
        return a[None]
    if a.ndim not in (3, 4):
        raise ValueError("filter_grid needs N x H x W, N x H x W x 3 or N x C x H x W data, got shape %s"
                         % (a.shape,))
    return a


def filter_grid(data, ncols=None, padsize=1, padval=1.0, normalize=True):
    """Tile N maps into one image, as the Caffe notebooks' ``vis_square``.

    The maps are scaled together to [0, 1] (so their relative strength
    shows), laid out ``ncols`` per row (default: a square, ceil(sqrt(N))),
    separated by ``padsize`` pixels of ``padval``; empty cells are padding.
    """
    import numpy as np
    maps = _as_maps(data)
    if normalize:
        lo, hi = float(maps.min()), float(maps.max())
        maps = (maps - lo) / (hi - lo) if hi > lo else np.zeros_like(maps)
    n = maps.shape[0]
    cols = int(ncols) if ncols else int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    pad = ((0, rows * cols - n), (0, padsize), (0, padsize)) + ((0, 0),) * (maps.ndim - 3)
    maps = np.pad(maps, pad, mode="constant", constant_values=padval)
    h, w = maps.shape[1:3]
    grid = maps.reshape((rows, cols) + maps.shape[1:]).swapaxes(1, 2)
    grid = grid.reshape((rows * h, cols * w) + maps.shape[3:])
    if padsize:   # no padding after the last row and column
        grid = grid[:rows * h - padsize, :cols * w - padsize]
    return grid


def plot_filters(data, path, ncols=None, padsize=1, title=None, size=(6, 6), dpi=100, cmap="gray"):
    """Save the ``filter_grid`` of conv weights, their diffs or activations as a PNG."""
    plt = _pyplot()
    grid = filter_grid(data, ncols=ncols, padsize=padsize)
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(grid, cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    _save(fig, path, dpi)
    plt.close(fig)
    return path


vis_square = plot_filters   # the name the Caffe notebooks give this figure


def plot_images(images, path, labels=None, title=None, size=None, dpi=100, cmap="gray"):
    """A row of images (N x H x W, N x 1 x H x W or N x H x W x 3), each titled by its label."""
    import numpy as np
    plt = _pyplot()
    maps = _as_maps(images)
    n = maps.shape[0]
    fig, axes = plt.subplots(1, n, figsize=size or (1.2 * n, 1.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(maps[i], cmap=cmap, interpolation="nearest")
        ax.axis("off")
        if labels is not None:
            label = np.asarray(labels)[i]
            ax.set_title("%g" % float(label), fontsize=9)
    if title:
        fig.suptitle(title)
    _save(fig, path, dpi)
    plt.close(fig)
    return path


# -- training curves from a live run -------------------------------------------------

def plot_loss_history(losses, path, test_scores=None, test_iters=None, loss_iters=None,
                      test_name="accuracy", title=None, size=(8, 5), dpi=100):
    """Train loss per iteration (left axis) and test scores (right axis), from Python lists.

    ``loss_iters`` defaults to 0, 1, 2, ...; ``test_iters`` to evenly spaced
    iterations over the run. A solver's own history: ``solver.losses`` and
    ``solver.loss_iters``.
    """
    losses = [float(v) for v in losses]
    loss_iters = list(range(len(losses))) if loss_iters is None else [int(i) for i in loss_iters]
    train_rows = [{"NumIters": i, "loss": v} for i, v in zip(loss_iters, losses)]
    test_rows = []
    if test_scores is not None and len(test_scores):
        if test_iters is None:
            step = max(len(losses) // len(test_scores), 1)
            test_iters = [k * step for k in range(len(test_scores))]
        test_rows = [{"NumIters": int(i), test_name: float(v)} for i, v in zip(test_iters, test_scores)]
    return plot_training_curves(train_rows, test_rows, path, loss_key="loss", test_key=test_name,
                                title=title, size=size, dpi=dpi)


def plot_score_history(image, scores, path, title=None, size=(10, 2.5), dpi=100, cmap="gray"):
    """One input (left) and how the net's class scores for it moved over iterations (right).

    ``scores`` is iterations x classes (raw scores or probabilities); as in
    the LeNet notebook, classes run down and iterations across.
    """
    import numpy as np
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float32)
    fig, (ax_img, ax_scores) = plt.subplots(1, 2, figsize=size, gridspec_kw={"width_ratios": [1, 5]})
    ax_img.imshow(_as_maps(image)[0], cmap=cmap, interpolation="nearest")
    ax_img.axis("off")
    ax_scores.imshow(scores.T, cmap=cmap, interpolation="nearest", aspect="auto")
    ax_scores.set_xlabel("iteration")
    ax_scores.set_ylabel("label")
    ax_scores.set_yticks(range(scores.shape[1]))
    if title:
        ax_scores.set_title(title)
    fig.tight_layout()
    _save(fig, path, dpi)
    plt.close(fig)
    return path
