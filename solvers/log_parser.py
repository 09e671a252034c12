"""Read Caffe-format training logs (ours or BVLC Caffe's) into train/test series.

Understands the lines the solver writes, with either glog time prefix
(``I1126 18:46:37.911813`` or the newer ``I20261126 18:46:37.911813``)::

    Iteration 100 (27.4 iter/s, 0.36s/10 iters), loss = 0.59
        Train net output #0: loss = 0.59 (* 1 = 0.59 loss)
    Iteration 100, lr = 0.00999
    Iteration 100, Testing net (#0)
        Test net output #0: accuracy = 0.97

and produces rows like Caffe's ``tools/extra/parse_log.py``: NumIters,
Seconds (since the first timestamp), LearningRate and one column per output.
"""
import csv
import datetime
import os
import re

_ITER = re.compile(r"Iteration (\d+)")
_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([-+.\deEinfaN]+)")
_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([-+.\deEinfaN]+)")
_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_LOSS = re.compile(r"Iteration (\d+).*, loss = ([-+.\deEinfaN]+)")
_STAMP = re.compile(r"^[IWEF](\d{4}|\d{8}) (\d\d):(\d\d):(\d\d)\.(\d+)")


def _timestamp(line, year):
    m = _STAMP.match(line)
    if not m:
        return None
    date = m.group(1)
    if len(date) == 8:
        year, date = int(date[:4]), date[4:]
    month, day = int(date[:2]), int(date[2:])
    micro = int(m.group(5)[:6].ljust(6, "0"))
    return datetime.datetime(year, month, day, int(m.group(2)), int(m.group(3)), int(m.group(4)), micro)


class _Series:
    """Rows of one phase; a row closes when a new iteration's output starts."""

    def __init__(self):
        self.rows = []
        self.row = None

    def add(self, iteration, seconds, name, value):
        if self.row is None or self.row["NumIters"] != iteration:
            self.close()
            self.row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": float("nan")}
        self.row[name] = value

    def close(self):
        if self.row is not None:
            self.rows.append(self.row)
            self.row = None


def parse_log(path_or_lines, year=None):
    """Return ``(train_rows, test_rows)``: lists of dicts keyed by column name.

    Train rows also carry ``loss`` from the ``Iteration N ..., loss = L`` line
    (the smoothed loss Caffe displays) when the net prints no output named so.
    """
    if isinstance(path_or_lines, (str, os.PathLike)):
        with open(path_or_lines) as f:
            lines = f.read().splitlines()
        if year is None:
            year = datetime.datetime.fromtimestamp(os.path.getmtime(path_or_lines)).year
    else:
        lines = list(path_or_lines)
    year = year or datetime.date.today().year
    train, test = _Series(), _Series()
    iteration, start, rates = -1, None, {}
    for line in lines:
        stamp = _timestamp(line, year)
        if stamp is not None and start is None:
            start = stamp
        m = _ITER.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration < 0:
            continue
        seconds = (stamp - start).total_seconds() if stamp is not None else float("nan")
        m = _LR.search(line)
        if m:
            rates[iteration] = float(m.group(1))
        m = _LOSS.search(line)
        if m:
            train.add(iteration, seconds, "smoothed_loss", float(m.group(2)))
        for regex, series in ((_TRAIN, train), (_TEST, test)):
            m = regex.search(line)
            if m:
                series.add(iteration, seconds, m.group(2), float(m.group(3)))
    train.close()
    test.close()
    for row in train.rows + test.rows:
        row["LearningRate"] = _rate_at(rates, row["NumIters"])
    return train.rows, test.rows


def _rate_at(rates, iteration):
    """The rate logged at ``iteration``, else the latest before it, else the first after."""
    if iteration in rates:
        return rates[iteration]
    before = [i for i in rates if i <= iteration]
    if before:
        return rates[max(before)]
    return rates[min(rates)] if rates else float("nan")


def columns(rows):
    """Column names in first-seen order, NumIters, Seconds, LearningRate first."""
    names = ["NumIters", "Seconds", "LearningRate"]
    for row in rows:
        for k in row:
            if k not in names:
                names.append(k)
    return names


def save_csv(rows, path, delimiter=","):
    """Write rows as CSV (to a temporary name, then renamed)."""
    import io
    from netspec.io import atomic_write_bytes
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(rows), delimiter=delimiter, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))
