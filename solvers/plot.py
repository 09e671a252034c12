"""Headless matplotlib figures a Caffe user draws while training.

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
    root, ext = os.path.splitext(str(path))
    tmp = "%s.tmp%d%s" % (root, os.getpid(), ext or ".png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def plot_training_curves(train_rows, test_rows, path, loss_key=None, test_key=None,
                         title=None, size=(8, 5), dpi=100):
    """Train loss (left axis) and a test score (right axis) against iterations.

    ``train_rows``/``test_rows`` are lists of dicts with ``NumIters`` (as
    ``solvers.log_parser.parse_log`` returns), or pass plain sequences via
    ``plot_loss_history``. ``loss_key`` defaults to ``loss`` (else the first
    output); ``test_key`` to ``accuracy`` when the test net has one, else its
    first output.
    """
    plt = _pyplot()

    def pick(rows, preferred):
        keys = [k for k in (rows[0] if rows else {}) if k not in ("NumIters", "Seconds", "LearningRate")]
        if preferred in keys:
            return preferred
        return keys[0] if keys else None

    loss_key = loss_key or pick(train_rows, "loss")
    test_key = test_key or pick(test_rows, "accuracy")
    fig, ax1 = plt.subplots(figsize=size)
    if loss_key:
        ax1.plot([r["NumIters"] for r in train_rows], [r.get(loss_key) for r in train_rows],
                 color="tab:blue", label="train " + loss_key)
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("train %s" % (loss_key or "loss"))
    if test_rows and test_key:
        ax2 = ax1.twinx()
        ax2.plot([r["NumIters"] for r in test_rows], [r.get(test_key) for r in test_rows],
                 color="tab:red", marker="o", label="test " + test_key)
        ax2.set_ylabel("test %s" % test_key)
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    _save(fig, path, dpi)
    plt.close(fig)
    return path


def plot_log(log_path, path, **kwargs):
    """Training curves straight from a Caffe-format log file (ours or Caffe's)."""
    from solvers.log_parser import parse_log
    train_rows, test_rows = parse_log(log_path)
    kwargs.setdefault("title", os.path.basename(str(log_path)))
    return plot_training_curves(train_rows, test_rows, path, **kwargs)
