"""The paper's model parallelism: tower t of AlexNet on device t (section 3.2, Figure 2).

`TowerNet` runs the one-device layer sequence of alexnet_cuda.model split over the towers' devices,
with the same arithmetic. Each layer states how it splits (`tower_rule`):

    grouped    a convolution with groups = towers (conv2, conv4, conv5): tower t computes its
               group on its own device from its own input channels
    gather_in  a layer that reads every input channel (conv1 on the image, conv3, fc6, fc7, fc8):
               tower t computes its rows of the output (output kernels, output neurons) from the
               whole input
    full       dropout: run on the whole tensor on every device, so that its mask is the one-device
               mask (a pure function of the element's position)
    window     LRN: a window across channels, which crosses the towers' boundary in the one-device
               model; each tower normalizes its channels with `size // 2` boundary channels of its
               neighbour (a halo), so every value is the one-device value
    any        elementwise or per channel (ReLU, max-pooling, flatten): on whatever the tower holds

Walking the sequence, a tower holds either its slice of the channels ("split") or the whole
tensor ("full"). Where a `gather_in` or `full` layer meets a split tensor, the towers meet
(`Concat`): the receiving device reads each peer's slice directly from the peer's memory and writes
it into its channel slice of the concatenated input (the transfer kernels, csrc/kernels/transfer.cu);
backward, it reads the peer's gradient of its own slice and adds it to the local one. For AlexNet the
meeting points are conv3's input and the inputs of fc6, fc7 (after dropout) and fc8, as in the paper;
the logits, split by class, are gathered on the first device for the loss.

Parameters are split by rows (`tower_rows`: rows n*t//T .. n*(t+1)//T), so concatenating the
towers' rows gives the one-device parameter: the checkpoint format does not depend on the devices.
fc8 is split by classes too (the paper's two GPUs each held half of the 1000 output neurons): each
device holds half of every layer's parameters, and the exchange before the loss is only N x classes
floats.

Devices: `Exchange` enables peer access between the devices where it can; where it cannot, a read of
a peer array becomes cudaMemcpyPeerAsync into a staging buffer and the same kernel reads that (said
once). Both towers may be on one device (`devices=(0, 0)`): the same exchange code, with local reads.
Each tower's kernels run on its device's current stream; at every meeting point events order the
streams both ways (the receivers wait for the senders' work, then the senders wait for the
receivers' reads before they reuse their buffers); between meeting points the towers' work is
independent and overlaps.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

__all__ = ["TowerNet", "Sharded", "Exchange", "tower_rows", "parse_devices", "sharded_sq_norm"]


def tower_rows(n, towers, t):
    """The rows [lo, hi) of an n-row parameter (or n channels) that tower t holds."""
    return n * t // towers, n * (t + 1) // towers


def parse_devices(devices):
    """A tuple of device numbers from a sequence or a string '0,1'; None stays None."""
    if devices is None:
        return None
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ValueError(f"devices: expected device numbers separated by commas, e.g. '0,1', got {devices!r}")
        return tuple(int(p) for p in parts)
    out = tuple(devices)
    if not out or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in out):
        raise ValueError(f"devices: expected one or more device numbers >= 0, got {devices!r}")
    return tuple(int(d) for d in out)


class Sharded(tuple):
    """A parameter (gradient, velocity) of the multi-device model: its towers' row pieces, piece t on
    `devices[t]`; `full_shape` is the one-device shape."""

    def __new__(cls, parts, devices, full_shape):
        obj = super().__new__(cls, parts)
        obj.devices, obj.full_shape = tuple(devices), tuple(full_shape)
        return obj


def sharded_sq_norm(be, a):
    """The squared norm of a Sharded array as a 0-d float64 array of the current device."""
    xp, parts = be.xp, []
    for p, d in zip(a, a.devices):
        with be.use_device(d):
            flat = p.ravel()
            parts.append(xp.vdot(flat, flat).astype(xp.float64))
    return sum(v.copy() for v in parts)  # copy(): onto the current device (cupy reads peers)


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------

class Exchange:
    """How device r reads an array of device s: directly (the same device, or with peer access), or
    through cudaMemcpyPeerAsync into a staging buffer on r when peer access is not possible."""

    _said = set()  # (backend name, r, s) already reported

    def __init__(self, be, devices):
        self.be, self.direct = be, {}
        for r in sorted(set(devices)):
            for s in sorted(set(devices)):
                self.direct[r, s] = r == s or self._peer(r, s)

    def _peer(self, r, s):
        be = self.be
        if be.can_access_peer(r, s):
            with be.use_device(r):
                be.enable_peer_access(s)
            return True
        key = (be.name, r, s)
        if key not in Exchange._said:
            Exchange._said.add(key)
            warnings.warn(f"{be.name}: device {r} cannot access device {s}'s memory (no peer access): the towers "
                          f"exchange through cudaMemcpyPeerAsync into a staging buffer on device {r} instead",
                          RuntimeWarning, stacklevel=2)
        return False

    def fetch(self, a, s, r):
        """`a` (memory of device s) as kernels on device r (current) may read it."""
        if self.direct[r, s]:
            return a
        staging = self.be.empty(a.shape, a.dtype)
        self.be.memcpy_peer(staging, r, a, s)
        return staging

    def order(self, devices, senders, receivers):
        """Make each receiver tower's stream wait for the work issued on each sender tower's stream."""
        be = self.be
        events = {}
        for s in senders:
            with be.use_device(devices[s]):
                events[s] = be.record_event()
        for r in receivers:
            with be.use_device(devices[r]):
                for s in senders:
                    if devices[s] != devices[r]:
                        be.wait_event(events[s])


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

class Layers:
    """A run of layers each tower computes on its own device: `towers[t]` is tower t's list;
    `split[i]` says whether the towers hold channel slices after layer i."""

    def __init__(self, towers):
        self.towers = [[] for _ in range(towers)]
        self.split = []

    def forward(self, net, xs, train, ctx, stop=None):
        """(outputs, index of the layer named `stop` or None)."""
        be = net.be
        for i in range(len(self.towers[0])):
            for t, layers in enumerate(self.towers):
                with be.use_device(net.devices[t]):
                    xs[t] = layers[i].forward(be, xs[t], train, ctx)
            if stop is not None and self.towers[0][i].name == stop:
                return xs, i
        return xs, None

    def backward(self, net, dys, first):
        be = net.be
        for i in range(len(self.towers[0]) - 1, -1, -1):
            for t, layers in enumerate(self.towers):
                with be.use_device(net.devices[t]):
                    if first and i == 0:
                        layers[i].backward(be, dys[t], need_dx=False)  # the image needs no gradient
                    else:
                        dys[t] = layers[i].backward(be, dys[t])
                    layers[i].clear()
        return dys

    def clear(self):
        for layers in self.towers:
            for l in layers:
                l.clear()


class Concat:
    """The towers meet: each receiver tower gets the concatenation along dimension 1 of every
    tower's slice (receivers None: every tower)."""

    def __init__(self, receivers=None):
        self.receivers = receivers

    def _recv(self, n):
        return range(n) if self.receivers is None else self.receivers

    def forward(self, net, xs, train, ctx):
        be, dev, T = net.be, net.devices, len(xs)
        widths = [x.shape[1] for x in xs]
        offsets = np.cumsum([0] + widths)[:-1].tolist()
        net.exchange.order(dev, range(T), self._recv(T))
        out = [None] * T
        for r in self._recv(T):
            with be.use_device(dev[r]):
                full = be.empty(xs[0].shape[:1] + (sum(widths),) + tuple(xs[0].shape[2:]), xs[0].dtype)
                for s in range(T):
                    be.transfer_forward(net.exchange.fetch(xs[s], dev[s], dev[r]), full, offset=offsets[s])
                out[r] = full
        net.exchange.order(dev, self._recv(T), range(T))  # the senders' buffers are free again
        self._slices = list(zip(offsets, widths))
        return out

    def backward(self, net, dys, first):
        be, dev, T = net.be, net.devices, len(dys)
        recv = list(self._recv(T))
        net.exchange.order(dev, recv, range(T))
        out = []
        for t, (offset, width) in enumerate(self._slices):
            with be.use_device(dev[t]):
                others = [r for r in recv if r != t]
                local = dys[t] if t in recv else None
                if not others:
                    grad, local = local, None
                else:
                    grad = net.exchange.fetch(dys[others[0]], dev[others[0]], dev[t])
                out.append(be.transfer_backward(grad, offset=offset, channels=width, local=local))
        net.exchange.order(dev, range(T), recv)
        return out

    def clear(self):
        self.__dict__.pop("_slices", None)


class HaloLRN:
    """LRN over split channels with the one-device values: tower 0 normalizes [its C0 | h of tower 1],
    tower 1 [h of tower 0 | its C1] (h = size // 2), and keeps its own channels. Backward needs the
    neighbour's dy, y and scale on the halo, read from the neighbour."""

    def __init__(self, layer, rows):
        self.name, self.hp, self.h = layer.name, dict(layer.hp), layer.hp["size"] // 2
        if min(hi - lo for lo, hi in rows) < self.h:
            raise ValueError(f"{layer.name}: a tower has {min(hi - lo for lo, hi in rows)} channels, fewer than "
                             f"the LRN's half window {self.h}; use one device or a wider model")

    def _layout(self, widths):
        """Per tower: (where its own channels start in its extended tensor, where the halo starts,
        the first halo channel in the neighbour's own channels)."""
        h, (c0, _) = self.h, widths
        return [(0, c0, 0), (h, 0, c0 - h)]

    def _extend(self, net, t, mine, theirs, widths):
        """Tower t's [own | halo] tensor (on its device, which is current) from `mine` and the neighbour's
        `theirs` (both tower-shaped)."""
        be, dev, p = net.be, net.devices, 1 - t
        own, halo, src = self._layout(widths)[t]
        ext = be.empty(mine.shape[:1] + (widths[t] + self.h,) + tuple(mine.shape[2:]), mine.dtype)
        be.transfer_forward(mine, ext, offset=own)
        be.transfer_forward(net.exchange.fetch(theirs, dev[p], dev[t]), ext, offset=halo, src_offset=src,
                            channels=self.h)
        return ext

    def forward(self, net, xs, train, ctx):
        be, dev = net.be, net.devices
        widths = [x.shape[1] for x in xs]
        net.exchange.order(dev, range(2), range(2))
        out, cache = [], []
        for t in range(2):
            with be.use_device(dev[t]):
                ext = self._extend(net, t, xs[t], xs[1 - t], widths)
                y, scale = be.lrn_forward(ext, **self.hp)
                out.append(be.transfer_backward(y, offset=self._layout(widths)[t][0], channels=widths[t]))
                cache.append((ext, y, scale))
        net.exchange.order(dev, range(2), range(2))
        if train:
            self._cache = (widths, cache)
        return out

    def backward(self, net, dys, first):
        be, dev = net.be, net.devices
        widths, cache = self._cache
        lay = self._layout(widths)
        net.exchange.order(dev, range(2), range(2))
        dext = []
        for t in range(2):
            with be.use_device(dev[t]):
                dext.append(self._extend(net, t, dys[t], dys[1 - t], widths))
                # the halo of y and scale: the neighbour's own (true) values, into the halo part only
                # (disjoint from the own part the neighbour reads here)
                own_p, (_, halo, src) = lay[1 - t][0], lay[t]
                for k in (1, 2):
                    theirs = net.exchange.fetch(cache[1 - t][k], dev[1 - t], dev[t])
                    be.transfer_forward(theirs, cache[t][k], offset=halo, src_offset=own_p + src, channels=self.h)
        net.exchange.order(dev, range(2), range(2))
        out = []
        for t in range(2):
            with be.use_device(dev[t]):
                x, y, scale = cache[t]
                dx = be.lrn_backward(dext[t], x, y, scale, **self.hp)
                out.append(be.transfer_backward(dx, offset=lay[t][0], channels=widths[t]))
        return out

    def clear(self):
        self.__dict__.pop("_cache", None)


# ---------------------------------------------------------------------------
# The split model
# ---------------------------------------------------------------------------

def _tower_part(layer, t, towers, rule):
    """Tower t's copy of `layer`: the rows it holds of a parameter layer, groups 1 for a grouped conv."""
    part = copy.copy(layer)
    if layer.params:
        n = layer.shapes["weight"][0]
        lo, hi = tower_rows(n, towers, t)
        part.rows = (lo, hi)
        part.shapes = {k: (hi - lo,) + tuple(s[1:]) for k, s in layer.shapes.items()}
        if rule == "grouped":
            if layer.groups != towers:
                raise ValueError(f"{layer.name}: groups {layer.groups} != towers {towers}; it cannot be split")
            part.groups = 1
    return part


def build_stages(layers, towers):
    """The stages (Layers, Concat, HaloLRN) of `layers` split over `towers` towers (module docstring)."""
    stages, split, rows = [], False, None
    for l in layers:
        rule = l.tower_rule
        if rule == "window" and split:
            stages.append(HaloLRN(l, rows))
            continue
        if rule in ("gather_in", "full") and split:
            stages.append(Concat())
            split = False
        if rule == "grouped" and not split:
            raise ValueError(f"{l.name}: a grouped layer needs its input split over the towers")
        if not stages or not isinstance(stages[-1], Layers):
            stages.append(Layers(towers))
        parts = [_tower_part(l, t, towers, rule) for t in range(towers)]
        if rule in ("gather_in", "grouped"):
            split, rows = True, [p.rows for p in parts]
        for t, p in enumerate(parts):
            p.tower_channels = rows[t] if split else None  # the channels its output holds
            stages[-1].towers[t].append(p)
        stages[-1].split.append(split)
    if split:
        stages.append(Concat(receivers=(0,)))  # the logits, for the loss on the first device
    return stages


class TowerNet:
    """`layers` (the one-device sequence, whose parameters it does not use) split over `devices`, tower t
    on devices[t]. Holds the towers' parameters, gradients, momentum and activations."""

    def __init__(self, be, devices, layers, dtype):
        if len(devices) != 2:
            raise ValueError(f"devices: the towers run on one or two devices, got {len(devices)} ({devices})")
        n = be.device_count()
        bad = [d for d in devices if d >= n]
        if bad:
            raise ValueError(f"devices: the {be.name} backend has {n} device{'s' if n != 1 else ''} "
                             f"(0..{n - 1}); device {bad[0]} does not exist"
                             + ("; ALEXNET_EMU_DEVICES=N presents N virtual devices" if be.name == "emu" else ""))
        self.be, self.devices, self.dtype = be, tuple(devices), np.dtype(dtype)
        self.exchange = Exchange(be, self.devices)
        self.stages = build_stages(layers, len(devices))
        runs = [s for s in self.stages if isinstance(s, Layers)]
        self.towers = [[l for s in runs for l in s.towers[t]] for t in range(len(devices))]
        self.names = [f"{l.name}.{p}" for l in self.towers[0] if l.params for p in l.params]
        self.momentum = [{} for _ in devices]

    def runs(self):
        """Each tower's runs of layers, one list per (Layers stage, tower): layers that run one after the other
        on one device, with no meeting point between them (model._fold_relu_backwards pairs neighbours)."""
        return [layers for s in self.stages if isinstance(s, Layers) for layers in s.towers]

    def _params(self, t):
        return [(f"{l.name}.{p}", l) for l in self.towers[t] if l.params for p in l.params]

    def _sharded(self, attr, shapes):
        out = {}
        for name in self.names:
            parts = [getattr(dict(self._params(t))[name], attr + name.split(".")[1]) for t in range(2)]
            out[name] = Sharded(parts, self.devices, shapes[name])
        return out

    def named_parameters(self, shapes):
        return list(self._sharded("", shapes).items())

    def gradients(self, shapes):
        return list(self._sharded("grad_", shapes).items())

    def sharded_momentum(self, shapes):
        return {n: Sharded([self.momentum[t][n] for t in range(2)], self.devices, shapes[n]) for n in self.names}

    def load(self, state, momentum=False):
        """Put each tower's rows of `state` (name -> full numpy array, already a private copy) on its device."""
        be = self.be
        for t, d in enumerate(self.devices):
            with be.use_device(d):
                for name, l in self._params(t):
                    lo, hi = l.rows
                    a = be.asarray(np.ascontiguousarray(state[name][lo:hi]), dtype=self.dtype)
                    if momentum:
                        self.momentum[t][name] = a
                    else:
                        setattr(l, name.split(".")[1], a)

    def state(self, momentum=False):
        """name -> full numpy array (the towers' rows concatenated)."""
        be, out = self.be, {}
        for name in self.names:
            parts = []
            for t in range(2):
                a = self.momentum[t][name] if momentum else getattr(dict(self._params(t))[name], name.split(".")[1])
                parts.append(np.asarray(be.to_numpy(a)))
            out[name] = np.concatenate(parts, axis=0)
        return out

    def _inputs(self, x):
        """The image batch on every tower's device: uploaded from the host, or, when a device already holds
        it (the training feed uploads there), copied from that device with cudaMemcpyPeerAsync, ordered
        after the holder's work and before the holder's next (so it may reuse the buffer): no host trip."""
        be, src = self.be, self.be.device_of(x)
        if src is None:
            out = []
            for d in self.devices:
                with be.use_device(d):
                    out.append(be.asarray(x, dtype=self.dtype))
            return out
        with be.use_device(src):
            x = be.asarray(x, dtype=self.dtype)
        ids = sorted(set(self.devices) | {src})
        self.exchange.order(ids, [ids.index(src)], range(len(ids)))
        copies = {src: x}
        for d in self.devices:
            if d not in copies:
                with be.use_device(d):
                    copies[d] = be.empty(x.shape, x.dtype)
                    be.memcpy_peer(copies[d], d, x, src)
        self.exchange.order(ids, range(len(ids)), [ids.index(src)])
        return [copies[d] for d in self.devices]

    def run(self, x, train, ctx, stop=None):
        """Forward from the batch x (host or device memory); the logits (or the output of layer `stop`) on the first
        device."""
        xs = self._inputs(x)
        for s in self.stages:
            if isinstance(s, Layers):
                xs, at = s.forward(self, xs, train, ctx, stop)
                if at is not None:
                    return self._gather(xs) if s.split[at] else xs[0]
            else:
                xs = s.forward(self, xs, train, ctx)
        return xs[0]

    def _gather(self, xs):
        full = Concat(receivers=(0,)).forward(self, xs, False, None)
        return full[0]

    def backward(self, d):
        """Backward from d(loss)/d(logits) on the first device; fills every layer's gradients."""
        dys = [d, None]
        for i in range(len(self.stages) - 1, -1, -1):
            s = self.stages[i]
            dys = s.backward(self, dys, i == 0)
            s.clear()

    def clear(self):
        for s in self.stages:
            s.clear()

    def apply_update(self, lr, momentum, weight_decays, loss=None):
        """The SGD phase on each device: the same update, element by element, as one device. `loss`
        (optional, 0-d on the first device): not finite, no device writes anything; each other device
        tests its own copy, taken on its stream after the first device's stream has written the loss."""
        be = self.be
        if loss is not None:
            with be.use_device(self.devices[0]):
                written = be.record_event()
        for t, d in enumerate(self.devices):
            with be.use_device(d):
                mine = loss
                if loss is not None and d != self.devices[0]:
                    be.wait_event(written)
                    mine = be.empty((), loss.dtype)
                    be.memcpy_peer(mine, d, loss, self.devices[0])
                params = self._params(t)
                be.sgd_update_multi([getattr(l, n.split(".")[1]) for n, l in params],
                                    [getattr(l, "grad_" + n.split(".")[1]) for n, l in params],
                                    [self.momentum[t][n] for n, _ in params], lr=lr, momentum=momentum,
                                    weight_decays=[weight_decays[n] for n, _ in params], loss=mine)

    def relus(self):
        """{name: [tower t's copy]} of the layers that track activity."""
        out = {}
        for t in range(2):
            for l in self.towers[t]:
                if hasattr(l, "track"):
                    out.setdefault(l.name, []).append(l)
        return out

    def take_activity(self, name, reset):
        """A ReLU's activity mask over all its units (host-joined when split), or None."""
        parts = self.relus()[name]
        masks = [p.active for p in parts]
        if reset:
            for p in parts:
                p.active = None
        if any(m is None for m in masks):
            return None
        if parts[0].tower_channels is None:
            return masks[0]
        return self.be.asarray(np.concatenate([np.asarray(self.be.to_numpy(m)) for m in masks], axis=0),
                               dtype=np.bool_)

    def set_activity(self, name, mask):
        be = self.be
        for t, p in enumerate(self.relus()[name]):
            with be.use_device(self.devices[t]):
                m = np.asarray(be.to_numpy(mask))
                if p.tower_channels is not None:
                    m = m[p.tower_channels[0]:p.tower_channels[1]]
                p.active = be.asarray(np.array(m, np.bool_, copy=True), dtype=np.bool_)
