"""Automatic Split layers, as Caffe's ``InsertSplits`` adds them.

Layers overwrite their bottom diffs, so a blob read by several layers would
keep only the last layer's gradient. Caffe therefore rewrites the net: such a
blob feeds one Split layer whose tops (one per consumer) each go to one
layer, and the Split layer sums their diffs in backward. A top with an
explicit nonzero ``loss_weight`` counts as one more consumer. Names follow
Caffe exactly, so the layer and blob names (and caffemodels) agree with it.
"""
import difflib

from netspec import caffe_pb2
from netspec.errors import NetError

INPUT_LAYER_NAME = "input"   # what Caffe calls the producer of the deprecated ``input:`` fields


def split_layer_name(layer_name, blob_name, blob_idx):
    return "%s_%s_%d_split" % (blob_name, layer_name, blob_idx)


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return "%s_%s_%d_split_%d" % (blob_name, layer_name, blob_idx, split_idx)


def _split_layer(layer_name, blob_name, blob_idx, split_count, loss_weight):
    split = caffe_pb2.LayerParameter()
    split.name = split_layer_name(layer_name, blob_name, blob_idx)
    split.type = "Split"
    split.bottom.append(blob_name)
    for k in range(split_count):
        split.top.append(split_blob_name(layer_name, blob_name, blob_idx, k))
    if loss_weight:
        # The loss now sits on the Split's first top.
        split.loss_weight.extend([loss_weight] + [0.0] * (split_count - 1))
    return split


def _unknown_bottom(layer_param, bottom_idx, blob_name, known):
    near = difflib.get_close_matches(blob_name, list(known), n=1)
    hint = " Did you mean %r?" % near[0] if near else ""
    produced = ", ".join(repr(b) for b in known) or "none"
    return NetError("layer %r (type %s), bottom %d: unknown bottom blob %r; no layer before it produces "
                    "a top of that name.%s Tops produced before this layer: %s. Check the bottom name "
                    "and the include/exclude rules of the layer that should produce it."
                    % (layer_param.name, layer_param.type, bottom_idx, blob_name, hint, produced))


def insert_splits(net_param):
    """Return a copy of ``net_param`` with Split layers where a blob has several consumers."""
    last_producer = {}       # blob name -> (layer index, top index) of its latest producer
    source_of_bottom = {}    # (layer index, bottom index) -> (layer index, top index)
    consumers = {}           # (layer index, top index) -> number of uses
    loss_weight_of = {}      # (layer index, top index) -> explicit loss weight
    layer_names = {-1: INPUT_LAYER_NAME}

    for i, blob_name in enumerate(net_param.input):
        last_producer[blob_name] = (-1, i)
    for i, layer_param in enumerate(net_param.layer):
        layer_names[i] = layer_param.name
        for j, blob_name in enumerate(layer_param.bottom):
            if blob_name not in last_producer:
                raise _unknown_bottom(layer_param, j, blob_name, last_producer)
            top_idx = last_producer[blob_name]
            source_of_bottom[(i, j)] = top_idx
            consumers[top_idx] = consumers.get(top_idx, 0) + 1
        for j, blob_name in enumerate(layer_param.top):
            last_producer[blob_name] = (i, j)
        # A loss on a top is one more use of it.
        for j in range(min(len(layer_param.loss_weight), len(layer_param.top))):
            top_idx = last_producer[layer_param.top[j]]
            loss_weight_of[top_idx] = layer_param.loss_weight[j]
            if layer_param.loss_weight[j]:
                consumers[top_idx] = consumers.get(top_idx, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split_idx = {}      # (layer index, top index) -> next split top to hand out

    for i, blob_name in enumerate(net_param.input):
        count = consumers.get((-1, i), 0)
        if count > 1:
            out.layer.append(_split_layer(INPUT_LAYER_NAME, blob_name, i, count, 0.0))
    for i, source in enumerate(net_param.layer):
        layer_param = out.layer.add()
        layer_param.CopyFrom(source)
        for j, blob_name in enumerate(layer_param.bottom):
            top_idx = source_of_bottom[(i, j)]
            if consumers.get(top_idx, 0) > 1:
                k = next_split_idx.get(top_idx, 0)
                next_split_idx[top_idx] = k + 1
                layer_param.bottom[j] = split_blob_name(layer_names[top_idx[0]], blob_name, top_idx[1], k)
        splits = []
        for j, blob_name in enumerate(layer_param.top):
            count = consumers.get((i, j), 0)
            if count > 1:
                loss_weight = loss_weight_of.get((i, j), 0.0)
                splits.append(_split_layer(layer_names[i], blob_name, j, count, loss_weight))
                if loss_weight:
                    # The producer's loss moves to the Split's first top.
                    del layer_param.loss_weight[:]
                    next_split_idx[(i, j)] = next_split_idx.get((i, j), 0) + 1
        out.layer.extend(splits)
    return out
