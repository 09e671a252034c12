"""The same net in PyTorch, as a speed reference for bench/zoo.py (never used by the toolkit).

``TorchNet(net)`` walks one of our built Nets -- its layers in order, their
parameters (copied) and blob names -- and maps each Caffe layer type to
torch.nn.functional. Only what the zoo nets use is here; another type raises
``NotTranslatable`` (the benchmark then prints that and skips the
reference). Caffe's sizing rules that torch shares: ceil-mode pooling whose
last window starts inside the input or its left pad, AVE divisors counted to
the padded border, LRN across channels with alpha / size.
"""
import numpy as np


class NotTranslatable(Exception):
    pass


def _spatial(layer):
    g = layer.geo
    if g.num_spatial != 2:
        raise NotTranslatable("%d-d convolution" % g.num_spatial)
    return dict(stride=tuple(g.stride), padding=tuple(g.pad), dilation=tuple(g.dilation))


class TorchNet:
    """``forward(inputs)`` -> ({blob: tensor}, weighted loss); parameters in ``params``."""

    def __init__(self, net, requires_grad=False):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F
        self.params = {name: [torch.tensor(np.array(b.data), requires_grad=requires_grad) for b in blobs]
                       for name, blobs in net.params.items()}
        self.steps = []
        for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
            if layer.type == "Input":
                continue
            weights = [float(w) for w in net._top_loss_weights[i]]
            self.steps.append((self._op(layer, self.params.get(name, [])), net.bottom_names[name],
                               net.top_names[name], weights))

    def forward(self, inputs):
        env, loss = dict(inputs), 0.0
        for fn, bottoms, tops, weights in self.steps:
            outs = fn(*[env[b] for b in bottoms])
            outs = outs if isinstance(outs, tuple) else (outs,)
            for t, v, w in zip(tops, outs, weights):
                env[t] = v
                if w:
                    loss = loss + w * v.sum()
        return env, loss

    def _op(self, layer, p):
        torch, F = self.torch, self.F
        lp, t = layer.layer_param, layer.type
        if t == "Convolution":
            kw = _spatial(layer)
            return lambda x: F.conv2d(x, p[0], p[1] if len(p) > 1 else None, groups=layer.group, **kw)
        if t == "Deconvolution":
            kw = _spatial(layer)
            return lambda x: F.conv_transpose2d(x, p[0], p[1] if len(p) > 1 else None, groups=layer.group, **kw)
        if t == "InnerProduct":
            ip = lp.inner_product_param
            axis = ip.axis

            def inner(x):
                x = x.flatten(axis)
                w = p[0].t() if ip.transpose else p[0]
                return F.linear(x, w, p[1] if len(p) > 1 else None)
            return inner
        if t == "ReLU":
            slope = lp.relu_param.negative_slope
            return (lambda x: F.relu(x)) if slope == 0 else (lambda x: F.leaky_relu(x, slope))
        if t == "Pooling":
            return self._pool(layer)
        if t == "LRN":
            if not layer.across:
                raise NotTranslatable("LRN WITHIN_CHANNEL")
            return lambda x: F.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
        if t in ("Dropout", "Split"):
            if t == "Dropout" and layer._training():
                raise NotTranslatable("Dropout in TRAIN (its mask cannot be reproduced)")
            return lambda x: x if t == "Dropout" else tuple([x] * len(lp.top))
        if t == "Softmax":
            return lambda x: F.softmax(x, dim=lp.softmax_param.axis)
        if t == "SoftmaxWithLoss":
            return self._softmax_loss(layer)
        if t == "Concat":
            return lambda *xs: torch.cat(xs, dim=layer.axis)
        if t == "Eltwise":
            coeff = layer.coeff
            op = lp.eltwise_param.operation

            def elt(*xs):
                if op == 1:   # SUM
                    out = xs[0] * coeff[0]
                    for c, x in zip(coeff[1:], xs[1:]):
                        out = out + c * x
                    return out
                out = xs[0]
                for x in xs[1:]:
                    out = out * x if op == 0 else torch.maximum(out, x)
                return out
            return elt
        if t == "BatchNorm":
            if not layer.use_global_stats:
                raise NotTranslatable("BatchNorm with batch statistics")
            sf = float(p[2].detach().numpy()[0])
            sf = 0.0 if sf == 0 else 1.0 / sf
            mean, var = p[0].detach() * sf, p[1].detach() * sf
            return lambda x: F.batch_norm(x, mean, var, training=False, eps=layer.eps)
        if t == "Scale":
            if len(lp.bottom) > 1:
                raise NotTranslatable("Scale with two bottoms")

            def scale(x):
                axis = lp.scale_param.axis % x.dim()
                view = [1] * axis + list(p[0].shape) + [1] * (x.dim() - axis - p[0].dim())
                y = x * p[0].view(view)
                return y + p[1].view(view) if layer.bias_index is not None else y
            return scale
        if t == "Crop":
            slices = layer.slices
            return lambda x, ref: x[slices]
        if t in ("Flatten",):
            return lambda x: x.flatten(lp.flatten_param.axis)
        raise NotTranslatable("layer type %s" % t)

    def _pool(self, layer):
        F = self.F
        P = layer.P
        k, s, pad = layer.kernel, layer.stride, layer.pad
        if layer.method == P.MAX:
            return lambda x: F.max_pool2d(x, k, s, pad, ceil_mode=layer.ceil)
        if layer.method == P.AVE:
            return lambda x: F.avg_pool2d(x, k, s, pad, ceil_mode=layer.ceil, count_include_pad=True)
        raise NotTranslatable("STOCHASTIC pooling")

    def _softmax_loss(self, layer):
        torch, F = self.torch, self.F
        lp = layer.layer_param
        ignore = lp.loss_param.ignore_label if lp.loss_param.HasField("ignore_label") else None
        norm = lp.loss_param.normalization
        if lp.loss_param.HasField("normalize"):   # the legacy field overrides normalization
            norm = 1 if lp.loss_param.normalize else 2   # VALID, else BATCH_SIZE
        axis = lp.softmax_param.axis

        def loss(x, label):
            logp = F.log_softmax(x, dim=axis)
            lab = label.long().reshape(logp.shape[:axis] + logp.shape[axis + 1:])
            valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore
            picked = torch.gather(logp, axis, torch.where(valid, lab, 0).unsqueeze(axis)).squeeze(axis)
            total = -(picked * valid).sum()
            count = {0: float(lab.numel()), 1: valid.sum().clamp(min=1), 2: float(x.shape[0]), 3: 1.0}[norm]
            return total / count
        return loss
