"""Caffe's recurrent layers: RNN, LSTM and the single-step LSTMUnit.

Caffe builds RNN and LSTM as an unrolled net of InnerProduct, Scale, Eltwise,
TanH and LSTMUnit layers. Here the same recurrences are written out directly:
one matrix product for all time steps of the input transform, a loop over time
steps for the recurrence (vectorised over streams and gates), and exact
backpropagation through time within the sequence. The parameter blobs are the
ones Caffe's unrolled net exposes, in the same order and shapes:

* RNN:  W_xh (H, D), b_h (H), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H)
* LSTM: W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H)

Bottoms are x (T, N, ...), cont (T, N) and optionally x_static (N, ...);
with ``expose_hidden`` the initial states (h_0, and c_0 for LSTM, each
(1, N, H)) follow as bottoms and the final states are extra tops. ``cont`` is
the sequence-continuation flag: where cont_t == 0 the state carried into step
t is dropped (h_{t-1} and, for LSTM, the forget gate are multiplied by cont_t).
Without ``expose_hidden`` the final state of one forward is the initial state
of the next, as in Caffe (truncated BPTT across batches); gradients never
flow across that boundary. That carried state is part of ``get_state()``, so
a resumed snapshot continues every stream where it stopped (Caffe's snapshot
forgets it and restarts from zeros).

Speed: the Python loop runs over time steps only. Per step the forward does
one (N, H) x (H, 4H) product and a few in-place element-wise operations; the
backward does one (N, 4H) x (4H, H) product, everything that does not depend
on the incoming gradient having been computed for all steps at once. Weight
gradients are one product over all T * N rows each. Steps where every stream
has cont = 1 skip the cont multiplications.

Where Caffe is silent this code does what a user would expect: with
``expose_hidden``, diffs on the final-state tops flow into the sequence and the
initial-state bottoms receive their gradient (Caffe drops both).
"""
import logging

import numpy as np

from solvers.backend import to_numpy
from solvers.blob import Blob
from solvers.fillers import fill
from solvers.layer import Layer, register_layer

log = logging.getLogger(__name__)


def _sigmoid(xp, x):
    # tanh form: no overflow warnings for large |x|
    return 0.5 * (xp.tanh(0.5 * x) + 1)


class _RecurrentLayer(Layer):
    """What RNN and LSTM share: bottom/top checks, parameter creation, carried state."""
    min_bottom = 2
    min_top = 1
    gates = 1          # H * gates outputs of the input transform
    state_names = ("h",)

    # -- set-up ----------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.layer_param.recurrent_param
        if p.num_output <= 0:
            raise self.error("recurrent_param.num_output must be set and positive")
        if bottom[0].num_axes < 2:
            raise self.error("bottom 0 must have at least 2 axes (#timesteps, #streams, ...), got %s"
                             % (bottom[0].shape,))
        self.H = p.num_output
        self.T, self.N = bottom[0].shape[:2]
        self.expose_hidden = p.expose_hidden
        n_exposed = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + n_exposed
        if len(bottom) != 2 + self.static_input + n_exposed:
            hidden = "".join(", " + s + "_0" for s in self.state_names) if self.expose_hidden else ""
            raise self.error("takes bottoms x, cont, [x_static]%s; got %d bottoms" % (hidden, len(bottom)))
        if len(top) != 1 + n_exposed:
            raise self.error("needs %d top(s) (output%s), got %d"
                             % (1 + n_exposed, ", final states" if n_exposed else "", len(top)))
        self._check_cont(bottom)
        self.D = bottom[0].count_range(2)
        self.S = None
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != self.N:
                raise self.error("x_static (bottom 2) must have shape (N=%d, ...), got %s" % (self.N, xs.shape))
            self.S = xs.count_range(1)
        self.blobs = self.make_blobs(p)
        self.param_propagate_down = [True] * len(self.blobs)
        self.carried = None  # final states of the last forward (without expose_hidden)

    def _weight(self, shape, p):
        b = Blob(shape)
        fill(b, p.weight_filler)
        return b

    def _bias(self, shape, p):
        b = Blob(shape)
        fill(b, p.bias_filler)
        return b

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def _check_cont(self, bottom):
        if bottom[1].num_axes != 2 or tuple(bottom[1].shape) != (self.T, self.N):
            raise self.error("cont (bottom 1) must have shape (T, N) = (%d, %d), got %s"
                             % (self.T, self.N, bottom[1].shape))

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2 or bottom[0].shape[0] != self.T:
            raise self.error("input number of timesteps changed: bottom 0 is %s, the layer was set up for T=%d"
                             % (bottom[0].shape, self.T))
        if bottom[0].count_range(2) != self.D:
            raise self.error("bottom 0 %s has %d inputs per step, the layer was set up for %d"
                             % (bottom[0].shape, bottom[0].count_range(2), self.D))
        n = bottom[0].shape[1]
        if n != self.N:
            self.N, self.carried = n, None
        self._check_cont(bottom)
        if self.static_input and (bottom[2].shape[0] != n or bottom[2].count_range(1) != self.S):
            raise self.error("x_static %s must be (N=%d, ...) with %d values per stream" % (bottom[2].shape, n, self.S))
        state_shape = (1, n, self.H)
        if self.expose_hidden:
            first = 2 + self.static_input
            for name, b in zip(self.state_names, bottom[first:]):
                if tuple(b.shape) != state_shape:
                    raise self.error("%s_0 bottom must have shape %s, got %s" % (name, state_shape, b.shape))
            for t in top[1:]:
                t.reshape(state_shape)
        top[0].reshape((self.T, n, self.H))

    # -- resumable state: the carried h (and c), so a resumed run continues each stream exactly
    def get_state(self):
        if self.expose_hidden:
            return None
        if self.carried is None:
            return {"carried": None}
        return {"carried": [to_numpy(s).tolist() for s in self.carried]}

    def set_state(self, state):
        if self.expose_hidden or state is None:
            return
        carried = state.get("carried")
        if carried is None:
            self.carried = None
            return
        try:
            arrays = [np.asarray(s, dtype=np.float32) for s in carried]
        except (TypeError, ValueError) as e:
            raise self.error("saved recurrent state is not a list of number arrays (%s)" % e) from None
        if len(arrays) != len(self.state_names) or any(a.shape != (self.N, self.H) for a in arrays):
            raise self.error("saved recurrent state has shapes %s, the layer needs %d of (%d, %d)"
                             % ([a.shape for a in arrays], len(self.state_names), self.N, self.H))
        xp = self.xp_of(self.blobs[0])
        self.carried = [xp.asarray(a) for a in arrays]

    # -- helpers -----------------------------------------------------------
    def _initial_states(self, xp, bottom):
        if self.expose_hidden:
            first = 2 + self.static_input
            return [b.data.reshape(self.N, self.H) for b in bottom[first:]]
        if self.carried is None:
            return [xp.zeros((self.N, self.H), dtype=bottom[0].data.dtype) for _ in self.state_names]
        return self.carried

    def _input_transform(self, xp, bottom, w, b, w_static):
        """W x_t + b for all steps at once (T, N, G), plus the static term (N, G) or None."""
        x = bottom[0].data.reshape(self.T * self.N, self.D)
        g = (x @ w.T + b).reshape(self.T, self.N, -1)
        static = None
        if self.static_input:
            static = bottom[2].data.reshape(self.N, self.S) @ w_static.T
        return g, static

    def _backward_inputs(self, xp, top, propagate_down, bottom, dpre, w_x, b_x, w_static):
        """Gradients of x_t, x_static, W_x, b_x and W_static from dpre = dL/d(pre-activation) (T, N, G)."""
        d2 = dpre.reshape(self.T * self.N, -1)
        pp = self.param_propagate_down
        i_wx, i_bx = 0, 1
        if pp[i_wx]:
            w_x.diff += d2.T @ bottom[0].data.reshape(self.T * self.N, self.D)
        if pp[i_bx]:
            b_x.diff += d2.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff.reshape(self.T * self.N, self.D)[...] = d2 @ w_x.data
        if self.static_input:
            dsum = dpre.sum(axis=0)  # (N, G): the static term enters every step
            if pp[2]:
                w_static.diff += dsum.T @ bottom[2].data.reshape(self.N, self.S)
            if propagate_down[2]:
                bottom[2].diff.reshape(self.N, self.S)[...] = dsum @ w_static.data

    def _debug(self, what, arrays):
        if self.layer_param.recurrent_param.debug_info:
            for name, a in arrays:
                log.info("    [%s] layer %s %s: mean |x| %.6g", what, self.name, name,
                         float(abs(a).mean()) if a.size else 0.0)


@register_layer("RNN")
class RNNLayer(_RecurrentLayer):
    """h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]); o_t = tanh(W_ho h_t + b_o)."""
    gates = 1
    state_names = ("h",)

    def make_blobs(self, p):
        H = self.H
        blobs = [self._weight((H, self.D), p), self._bias((H,), p)]
        if self.static_input:
            blobs.append(self._weight((H, self.S), p))
        blobs += [self._weight((H, H), p), self._weight((H, H), p), self._bias((H,), p)]
        return blobs

    def _params(self):
        w_xh, b_h = self.blobs[0], self.blobs[1]
        w_s = self.blobs[2] if self.static_input else None
        w_hh, w_ho, b_o = self.blobs[-3:]
        return w_xh, b_h, w_s, w_hh, w_ho, b_o

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self._params()
        T, N, H = self.T, self.N, self.H
        pre, static = self._input_transform(xp, bottom, w_xh.data, b_h.data, w_s.data if w_s else None)
        if static is not None:
            pre += static
        cont = bottom[1].data.reshape(T, N, 1)
        (h0,) = self._initial_states(xp, bottom)
        hs = xp.empty((T + 1, N, H), dtype=pre.dtype)
        hc = xp.empty((T, N, H), dtype=pre.dtype)
        hs[0] = h0
        whh_t = xp.ascontiguousarray(w_hh.data.T)
        for t in range(T):
            hc[t] = cont[t] * hs[t]
            hs[t + 1] = xp.tanh(pre[t] + hc[t] @ whh_t)
        o = xp.tanh(hs[1:].reshape(T * N, H) @ w_ho.data.T + b_o.data)
        top[0].data.reshape(T * N, H)[...] = o
        self.hs, self.hc = hs, hc
        if self.expose_hidden:
            top[1].data.reshape(N, H)[...] = hs[T]
        else:
            self.carried = [hs[T].copy()]
        self._debug("Forward", [("h", hs[1:]), ("o", o)])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(top[0])
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self._params()
        T, N, H = self.T, self.N, self.H
        n_x = 3 if self.static_input else 2
        hs, hc = self.hs, self.hc
        o = top[0].data.reshape(T * N, H)
        do = top[0].diff.reshape(T * N, H) * (1 - o * o)
        h_flat = hs[1:].reshape(T * N, H)
        if self.param_propagate_down[n_x + 1]:
            w_ho.diff += do.T @ h_flat
        if self.param_propagate_down[n_x + 2]:
            b_o.diff += do.sum(axis=0)
        dh_out = (do @ w_ho.data).reshape(T, N, H)
        cont = bottom[1].data.reshape(T, N, 1)
        dpre = xp.empty((T, N, H), dtype=do.dtype)
        dh_next = top[1].diff.reshape(N, H).copy() if self.expose_hidden else xp.zeros((N, H), do.dtype)
        w = w_hh.data
        for t in range(T - 1, -1, -1):
            h = hs[t + 1]
            dpre[t] = (dh_out[t] + dh_next) * (1 - h * h)
            dh_next = (dpre[t] @ w) * cont[t]
        if self.param_propagate_down[n_x]:
            w_hh.diff += dpre.reshape(T * N, H).T @ hc.reshape(T * N, H)
        self._backward_inputs(xp, top, propagate_down, bottom, dpre, w_xh, b_h, w_s)
        if self.expose_hidden and propagate_down[n_x]:
            bottom[n_x].diff.reshape(N, H)[...] = dh_next
        self._debug("Backward", [("dpre", dpre)])


@register_layer("LSTM")
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory over T steps; gates in Caffe's order (i, f, o, g), see LSTMUnit."""
    gates = 4
    state_names = ("h", "c")

    def make_blobs(self, p):
        G = 4 * self.H
        blobs = [self._weight((G, self.D), p), self._bias((G,), p)]
        if self.static_input:
            blobs.append(self._weight((G, self.S), p))
        blobs.append(self._weight((G, self.H), p))
        return blobs

    def _params(self):
        w_s = self.blobs[2] if self.static_input else None
        return self.blobs[0], self.blobs[1], w_s, self.blobs[-1]

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        w_xc, b_c, w_s, w_hc = self._params()
        T, N, H = self.T, self.N, self.H
        acts, static = self._input_transform(xp, bottom, w_xc.data, b_c.data, w_s.data if w_s else None)
        if static is not None:
            acts += static
        cont = bottom[1].data.reshape(T, N, 1)
        resets = _reset_steps(xp, cont)
        h0, c0 = self._initial_states(xp, bottom)
        dt = acts.dtype
        hs = xp.empty((T + 1, N, H), dtype=dt)
        cs = xp.empty((T + 1, N, H), dtype=dt)
        tanh_c = xp.empty((T, N, H), dtype=dt)
        rec = xp.empty((N, 4 * H), dtype=dt)
        hs[0], cs[0] = h0, c0
        whc_t = xp.ascontiguousarray(w_hc.data.T)   # BLAS runs the small products faster on it
        for t in range(T):
            # acts[t] holds W_xc x_t + b_c; add W_hc (cont_t h_{t-1}), then the gates in place
            xp.matmul(hs[t], whc_t, out=rec)
            if resets[t]:
                rec *= cont[t]
            acts[t] += rec
            _lstm_step(xp, acts[t], cs[t], cont[t] if resets[t] else None, cs[t + 1], tanh_c[t], hs[t + 1])
        top[0].data[...] = hs[1:]
        self.hs, self.cs, self.tanh_c, self.acts = hs, cs, tanh_c, acts
        if self.expose_hidden:
            top[1].data.reshape(N, H)[...] = hs[T]
            top[2].data.reshape(N, H)[...] = cs[T]
        else:
            self.carried = [hs[T].copy(), cs[T].copy()]
        self._debug("Forward", [("h", hs[1:]), ("c", cs[1:])])

    def backward(self, top, propagate_down, bottom):
        xp = self.xp_of(top[0])
        w_xc, b_c, w_s, w_hc = self._params()
        T, N, H = self.T, self.N, self.H
        cont = bottom[1].data.reshape(T, N, 1)
        resets = _reset_steps(xp, cont)
        dh = top[0].diff.copy()   # dL/dh_t, gathering the recurrent term as the loop goes back
        dt = dh.dtype
        if self.expose_hidden:
            dh[T - 1] += top[1].diff.reshape(N, H)
            dc = top[2].diff.reshape(N, H).copy()
        else:
            dc = xp.zeros((N, H), dt)
        dc_through_h, gate_factor = _lstm_backward_factors(xp, self.acts, self.cs[:-1], self.tanh_c)
        dpre = xp.empty((T, N, 4 * H), dtype=dt)
        dct = xp.empty((N, H), dtype=dt)
        rec = xp.empty((N, H), dtype=dt)
        dh_prev = xp.empty((N, H), dtype=dt) if self.expose_hidden else None
        w = w_hc.data
        for t in range(T - 1, -1, -1):
            _lstm_step_backward(xp, dh[t], dc, dc_through_h[t], gate_factor[t], self.acts[t], dct, dpre[t])
            if t == 0 and dh_prev is None:
                break
            xp.matmul(dpre[t], w, out=rec)   # dL/d(cont_t h_{t-1}), times cont: dL/dh_{t-1}
            if resets[t]:
                rec *= cont[t]
            if t > 0:
                dh[t - 1] += rec
            else:
                dh_prev[...] = rec
        if self.param_propagate_down[-1]:
            hc = self.hs[:-1] * cont          # the h_{t-1} that W_hc saw
            w_hc.diff += dpre.reshape(T * N, 4 * H).T @ hc.reshape(T * N, H)
        self._backward_inputs(xp, top, propagate_down, bottom, dpre, w_xc, b_c, w_s)
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            if propagate_down[first]:
                bottom[first].diff.reshape(N, H)[...] = dh_prev
            if propagate_down[first + 1]:
                bottom[first + 1].diff.reshape(N, H)[...] = dc
        self._debug("Backward", [("dpre", dpre)])


def _reset_steps(xp, cont):
    """Per step, whether any stream has cont != 1 there (only those steps need the cont multiply)."""
    return [bool(r) for r in (cont != 1).any(axis=(1, 2)).tolist()]


def _sigmoid_(xp, x):
    """sigmoid(x) in place, in the tanh form (no overflow warnings for large |x|)."""
    x *= 0.5
    xp.tanh(x, out=x)
    x *= 0.5
    x += 0.5


def _lstm_step(xp, gates, c_prev, cont, c_out, tanh_c_out, h_out):
    """One LSTM step for all streams, in place: gates (N, 4H) becomes the activations (i, f, o, g).

    f is multiplied by cont (0 where a sequence starts), exactly as Caffe's
    LSTMUnit; cont None means 1 for every stream. Writes c_t, tanh(c_t), h_t.
    """
    H = c_prev.shape[-1]
    _sigmoid_(xp, gates[..., :3 * H])
    i, f, o, g = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H], gates[..., 3 * H:]
    xp.tanh(g, out=g)
    if cont is not None:
        f *= cont
    xp.multiply(f, c_prev, out=c_out)
    xp.multiply(i, g, out=h_out)      # h_out as scratch for i * g
    c_out += h_out
    xp.tanh(c_out, out=tanh_c_out)
    xp.multiply(o, tanh_c_out, out=h_out)


def _lstm_backward_factors(xp, acts, c_prev, tanh_c):
    """What backward needs per step that does not depend on the incoming gradient (all steps at once).

    Returns dc_through_h = o * (1 - tanh(c)^2), the factor from dL/dh_t to dL/dc_t, and
    gate_factor (..., 4H): d(gate input)/dc_t for i, f, g and d(gate input)/dh_t for o.
    """
    H = tanh_c.shape[-1]
    i, f, o, g = acts[..., :H], acts[..., H:2 * H], acts[..., 2 * H:3 * H], acts[..., 3 * H:]
    dc_through_h = o * (1 - tanh_c * tanh_c)
    gate_factor = xp.empty(acts.shape, dtype=acts.dtype)
    gate_factor[..., :H] = g * i * (1 - i)
    gate_factor[..., H:2 * H] = c_prev * f * (1 - f)   # Caffe's form: f already holds cont * sigmoid
    gate_factor[..., 2 * H:3 * H] = tanh_c * o * (1 - o)
    gate_factor[..., 3 * H:] = i * (1 - g * g)
    return dc_through_h, gate_factor


def _lstm_step_backward(xp, dh, dc, dc_through_h, gate_factor, acts, dct, dgate):
    """Backward of one step: dgate (N, 4H) from dL/dh_t and dL/dc_t; dc becomes dL/dc_{t-1} in place."""
    H = dh.shape[-1]
    xp.multiply(dh, dc_through_h, out=dct)
    dct += dc
    n = dct.shape[0]
    xp.multiply(gate_factor.reshape(n, 4, H), dct.reshape(n, 1, H), out=dgate.reshape(n, 4, H))
    xp.multiply(dh, gate_factor[..., 2 * H:3 * H], out=dgate[..., 2 * H:3 * H])
    xp.multiply(dct, acts[..., H:2 * H], out=dc)


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step: bottoms c_{t-1} (1, N, H), gate input (1, N, 4H), cont (1, N); tops c_t, h_t.

    i, f, o = sigmoid, g = tanh of the four gate-input slices (that order);
    c_t = cont * f * c_{t-1} + i * g; h_t = o * tanh(c_t).
    """
    exact_num_bottom = 3
    exact_num_top = 2

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottom, top):
        n = bottom[0].shape[1] if bottom[0].num_axes > 1 else -1
        for i, b in enumerate(bottom):
            axes = 2 if i == 2 else 3
            if b.num_axes != axes or b.shape[0] != 1 or b.shape[1] != n:
                raise self.error("bottom %d must have shape (1, N=%d%s), got %s"
                                 % (i, n, "" if i == 2 else ", ...", b.shape))
        self.H = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.H:
            raise self.error("gate input (bottom 1) must have 4 * H = %d channels, got %s"
                             % (4 * self.H, bottom[1].shape))
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = self.xp_of(bottom[0])
        n, H = bottom[0].shape[1], self.H
        self.acts = bottom[1].data.reshape(n, 4 * H).copy()   # becomes the activations in place
        self.c_prev = bottom[0].data.reshape(n, H).copy()     # kept: top 0 may overwrite bottom 0
        self.tanh_c = xp.empty((n, H), dtype=self.acts.dtype)
        _lstm_step(xp, self.acts, self.c_prev, bottom[2].data.reshape(n, 1), top[0].data.reshape(n, H),
                   self.tanh_c, top[1].data.reshape(n, H))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to the sequence indicators (bottom 2); "
                             "set propagate_down: false")
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = self.xp_of(top[0])
        n, H = bottom[0].shape[1], self.H
        dc_through_h, gate_factor = _lstm_backward_factors(xp, self.acts, self.c_prev, self.tanh_c)
        dc = top[0].diff.reshape(n, H).copy()   # becomes dL/dc_{t-1}
        dgate = xp.empty((n, 4 * H), dtype=dc.dtype)
        _lstm_step_backward(xp, top[1].diff.reshape(n, H), dc, dc_through_h, gate_factor, self.acts,
                            xp.empty_like(dc), dgate)
        if propagate_down[0]:
            bottom[0].diff.reshape(n, H)[...] = dc
        if propagate_down[1]:
            bottom[1].diff.reshape(n, 4 * H)[...] = dgate
