"""The paper's two-tower AlexNet as Python layers over a backend's ops.

The model knows nothing of CUDA: every computation is a call to one of the
backend ops of the contract in docs/design.md (conv2d_forward, lrn_forward, ...), and
every buffer (weights, gradients, momentum, activations) is an array of the
backend that owns the model. `forward` and `train_step` accept numpy inputs on
every backend and move them there.

Topology (the paper's Figure 2), with ``c(n) = round(n * width)`` channels:

    conv1  c(96)  11x11/4        tower-local (each tower sees the image)
    ReLU, LRN, max-pool 3/2
    conv2  c(256) 5x5 pad 2      tower-local (groups = towers)
    ReLU, LRN, max-pool 3/2
    conv3  c(384) 3x3 pad 1      TOWERS MEET: every kernel sees all maps
    ReLU
    conv4  c(384) 3x3 pad 1      tower-local
    ReLU
    conv5  c(256) 3x3 pad 1      tower-local
    ReLU, max-pool 3/2
    fc6    c(4096)               TOWERS MEET: sees every map of every tower
    ReLU, dropout
    fc7    c(4096)  ReLU, dropout
    fc8    num_classes

Variants (constructor arguments; the defaults are the paper's; `alexnet-cuda ablate` compares them):
``activation`` "relu" (the paper's) or "tanh" (the saturating unit of its Figure 1; the layers are
then named tanh1..tanh7 instead of relu1..relu7), ``lrn`` on/off, ``pool`` "overlapping" (3x3
windows at stride 2, the paper's) or "non-overlapping" (2x2 at stride 2, the traditional pooling it
compares with; `feature_sizes` and `min_input_size` follow the choice), ``towers`` 2 (the paper's)
or 1, ``dropout`` p (0.5 in the paper). The pooling choice applies to pool1, pool2 and pool5.

The towers are an explicit unit (`TowerLayout`, `AlexNet.tower_layout`,
`AlexNet.tower_state_dict`): which layers belong to a tower, which output
channels (and weight rows) each tower owns, and the two points where towers
exchange activations (conv3 and fc6; in the paper a cross-GPU copy). On one
device the towers are computed together with grouped convolutions, which is the
same arithmetic. With ``devices=(0, 1)`` tower t runs on device t (the paper's two
GPUs; ``(0, 0)`` runs the same path on one device): alexnet_cuda.towers, where each
layer's ``tower_rule`` says how it splits.

Initializations:

* ``init="paper"`` (section 5): weights ~ N(0, 0.01); biases 1 in conv2, conv4,
  conv5, fc6, fc7 and 0 in conv1, conv3, fc8.
* ``init="paper-bias0.1"``: the paper's weights with biases of 0.1 where it has 1
  (the value of Caffe's bvlc_alexnet reproduction). The "full" preset's default,
  with lr 0.005: on a 10-class set the paper's biases of 1 make fc8 unstable at
  lr 0.01 and kill the upper ReLUs within ten steps, and at lr 0.01 conv1 blows
  up once learning starts (benchmarks/results/full_preset_cpu.md).
* ``init="he"`` (fan-in scaled, He et al. 2015): weights ~ N(0, 2 / fan_in)
  with fan_in = (in_channels / groups) * R * S for a conv and in_features for
  a linear layer; all biases 0. The "small" preset uses it: at quarter width
  the paper's init stays at chance (docs/measurements.md).

Dropout masks are keyed by (seed, offset) with
``offset = step * 2 + dropout_index`` (``step`` counts training steps of this
model, ``dropout_index`` is 0 after fc6 and 1 after fc7), so the masks are a
pure function of the model seed and the step: a resumed run draws exactly the
masks an uninterrupted one would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backends import get_backend
from .precision import check_precision
from .towers import TowerNet, parse_devices, sharded_sq_norm

__all__ = ["AlexNet", "PRESETS", "TowerLayout", "INITS", "ACTIVATIONS", "POOLS", "scaled_channels",
           "feature_sizes", "min_input_size", "MOMENTUM", "WEIGHT_DECAY"]

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
INITS = ("paper", "paper-bias0.1", "he")
ACTIVATIONS = ("relu", "tanh")
# pool choice -> (window, stride) of pool1, pool2 and pool5; the first is the paper's (section 3.4)
POOLS = {"overlapping": (3, 2), "non-overlapping": (2, 2)}
# The layers whose biases the paper sets to 1 (0 elsewhere); "paper-bias0.1" sets them to 0.1.
POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")

# The paper's channel counts, scaled by `width`.
BASE_CHANNELS = {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256,
                 "fc6": 4096, "fc7": 4096}

# Presets: `data_size` is the side the images are prepared at, `input_scale`
# multiplies (pixel - mean), `epochs` and `batch_size` are the defaults of
# `alexnet-cuda train`. Why each departure from the paper: docs/measurements.md.
PRESETS = {
    # The paper's network (60.97 M parameters): 227x227 crops of 256x256 images,
    # raw 0..255 pixels minus the mean, dropout 0.5, batch 128, 90 epochs. For a GPU.
    # Its two departures, measured (benchmarks/results/full_preset_cpu.md): biases 0.1 where the
    # paper has 1, and lr 0.005 (`--init paper --lr 0.01` is the paper's recipe).
    "full": dict(width=1.0, input_size=227, data_size=256, init="paper-bias0.1", dropout=0.5, input_scale=1.0,
                 batch_size=128, epochs=90, lr=0.005),
    # The same topology at quarter width (1.28 M parameters with 10 classes) on
    # 67x67 crops (the smallest input that leaves a 1x1 map after the last pool)
    # of 76x76 images, sized to train on 2 CPU cores in minutes.
    "small": dict(width=0.25, input_size=67, data_size=76, init="he", dropout=0.0, input_scale=1.0 / 64,
                  batch_size=64, epochs=25, lr=0.01),
}


def scaled_channels(n, width, towers):
    """round(n * width), at least one per tower and a multiple of `towers`."""
    c = max(1, int(round(n * width / towers))) * towers
    return c


def _conv_out(h, k, stride, pad):
    return (h + 2 * pad - k) // stride + 1


def _pool_window(pool):
    if pool not in POOLS:
        raise ValueError(f"AlexNet: pool must be one of {tuple(POOLS)}, got {pool!r}")
    return POOLS[pool]


def feature_sizes(input_size, pool="overlapping"):
    """Spatial sizes after conv1, pool1, pool2 and pool5 (conv2..conv5 keep the size) with the
    pooling `pool` (a key of POOLS): (55, 27, 13, 6) at 227 with either."""
    k, st = _pool_window(pool)
    s1 = _conv_out(input_size, 11, 4, 0)
    p1 = _conv_out(s1, k, st, 0) if s1 >= k else 0
    p2 = _conv_out(p1, k, st, 0) if p1 >= k else 0
    p5 = _conv_out(p2, k, st, 0) if p2 >= k else 0
    return s1, p1, p2, p5


def min_input_size(pool="overlapping"):
    """The smallest input side that leaves a positive size after the last pool (67 overlapping,
    39 non-overlapping)."""
    s = 11
    while feature_sizes(s, pool)[3] < 1:
        s += 1
    return s


# ---------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TowerLayout:
    """Which layers belong to a tower and where the towers meet.

    * ``tower_layers``: conv1..conv5. Tower t holds output channels
      ``out_slice(name, t)`` of each, i.e. rows ``out_slice`` of its weight.
    * ``local_layers``: conv1, conv2, conv4, conv5 see only their own tower's
      input maps (conv1: the image, of which each tower has a copy).
      Computed as grouped convolutions (groups = towers; conv1 has one group,
      as the image is shared).
    * ``meet_layers``: conv3 and fc6 read the maps of ALL towers: the points
      where, with one tower per device, activations cross devices.
    * ``head_layers``: fc6, fc7, fc8, after the towers have merged.
    """

    towers: int
    channels: tuple  # ((name, out_channels), ...) for conv1..conv5

    tower_layers = ("conv1", "conv2", "conv3", "conv4", "conv5")
    local_layers = ("conv1", "conv2", "conv4", "conv5")
    meet_layers = ("conv3", "fc6")
    head_layers = ("fc6", "fc7", "fc8")

    def out_slice(self, name, t):
        """The output channels (weight rows) of layer `name` that tower `t` owns."""
        if not 0 <= t < self.towers:
            raise ValueError(f"tower index {t} out of range [0, {self.towers})")
        k = dict(self.channels)[name] // self.towers
        return slice(t * k, (t + 1) * k)

    def groups(self, name):
        """The `groups` argument of layer `name`'s convolution."""
        return self.towers if name in ("conv2", "conv4", "conv5") else 1


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

class Layer:
    """A layer of the sequential network. Parameter layers set `params`.

    `can_fold_relu`: the layer's backward can also apply the backward of a ReLU right before it (its input
    is that ReLU's output), bit for bit relu_backward; `relu_input`: it does (set by _fold_relu_backwards,
    together with the ReLU's `backward_folded`)."""

    name = ""
    params = ()
    can_fold_relu = False
    relu_input = False

    def forward(self, be, x, train, ctx):
        raise NotImplementedError

    def backward(self, be, dy):
        raise NotImplementedError

    def clear(self):
        """Drop cached activations."""
        self.__dict__.pop("_cache", None)


def _storage(be, ctx):
    """The storage of a product's output: BF16 at precision bf16 (activations and their gradients between
    layers; the ops that follow keep it), else None (FP32, as the input)."""
    return be.bf16_dtype if ctx["precision"] == "bf16" else None


class Conv2d(Layer):
    params = ("weight", "bias")
    fuse_relu = False  # set by _pair_relus: the forward also applies the next layer's ReLU
    can_fold_relu = True  # conv2d_backward's relu_input: its data gradient applies the ReLU's before it
    algorithm = {"forward": "gemm", "backward": "gemm"}  # per pass, set by alexnet_cuda.autotune.apply

    def _algorithm(self, direction):
        """The `algorithm=` argument of this pass's op: none for the implicit GEMM (every backend's default)."""
        a = self.algorithm[direction]
        return {} if a == "gemm" else {"algorithm": a}

    @property
    def tower_rule(self):
        return "grouped" if self.groups > 1 else "gather_in"

    def __init__(self, name, in_ch, out_ch, kernel, *, stride=1, padding=0, groups=1):
        self.name, self.stride, self.padding, self.groups = name, stride, padding, groups
        self.shapes = {"weight": (out_ch, in_ch // groups, kernel, kernel), "bias": (out_ch,)}
        self.fan_in = (in_ch // groups) * kernel * kernel

    def forward(self, be, x, train, ctx):
        self._precision = ctx["precision"]
        if train:
            self._cache = x
        return be.conv2d_forward(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                 groups=self.groups, precision=self._precision,
                                 activation="relu" if self.fuse_relu else "none", out_dtype=_storage(be, ctx),
                                 **self._algorithm("forward"))

    def backward(self, be, dy, need_dx=True):
        dx, self.grad_weight, self.grad_bias = be.conv2d_backward(
            dy, self._cache, self.weight, stride=self.stride, padding=self.padding, groups=self.groups,
            need_dx=need_dx, precision=self._precision, relu_input=self.relu_input, **self._algorithm("backward"))
        return dx


class Linear(Layer):
    params = ("weight", "bias")
    tower_rule = "gather_in"
    fuse_relu = False  # as Conv2d's
    logits = False  # the last layer: its output (the logits) is FP32 at every precision

    def __init__(self, name, in_f, out_f):
        self.name = name
        self.shapes = {"weight": (out_f, in_f), "bias": (out_f,)}
        self.fan_in = in_f

    def forward(self, be, x, train, ctx):
        self._precision = ctx["precision"]
        if train:
            self._cache = x
        return be.linear_forward(x, self.weight, self.bias, precision=self._precision,
                                 activation="relu" if self.fuse_relu else "none",
                                 out_dtype=np.float32 if self.logits else _storage(be, ctx))

    def backward(self, be, dy):
        dx, self.grad_weight, self.grad_bias = be.linear_backward(dy, self._cache, self.weight,
                                                                  precision=self._precision)
        return dx


class ReLU(Layer):
    """ReLU; optionally tracks which units fire (AlexNet.track_activity, for alexnet_cuda.health).

    With `track` on, every train-mode forward ORs into `active` (a bool backend array of shape
    y.shape[1:], one entry per unit: channel x row x column, or feature) whether the unit's output
    was > 0 for some example of the batch. It only reads y: no computed value changes. Off by
    default, and then it costs nothing.

    `fused` (set by _pair_relus when a Conv2d or Linear precedes it): that layer's forward already
    applied max(0, .) in its kernel's epilogue, bit for bit relu_forward, so this layer only
    keeps y for its backward and the tracking.

    `backward_folded` (set by _fold_relu_backwards when the next layer can fold it: a MaxPool, a Dropout,
    an LRN fused with its max-pool): that layer's backward already zeroed the gradient where y <= 0
    (its relu_input), bit for bit relu_backward, so this layer's backward passes the gradient through.
    Its forward is unchanged (y, the activity tracking).
    """

    track = False
    active = None
    fused = False
    backward_folded = False
    tower_rule = "any"

    def __init__(self, name):
        self.name = name

    def forward(self, be, x, train, ctx):
        y = x if self.fused else be.relu_forward(x)
        if train:
            self._cache = y
            if self.track and y.shape[0]:
                self._observe(be, y)
        return y

    def _observe(self, be, y):
        # y >= 0 after the ReLU, so "some example > 0" is "the maximum over the batch > 0", a
        # reduction that needs no bool array of y's size (of the FP32 values, for BF16 storage)
        a = (be.from_bf16(y) if be.is_bf16(y) else y).max(axis=0) > 0
        if self.active is None:
            self.active = a
        else:
            be.xp.logical_or(self.active, a, out=self.active)

    def backward(self, be, dy):
        return dy if self.backward_folded else be.relu_backward(dy, self._cache)


def _pair_relus(layers, on):
    """Marks each Conv2d or Linear followed by a ReLU to compute that ReLU in its own forward (`fuse_relu`)
    and the ReLU to pass its input through (`fused`); on=False unmarks them (the separate ReLU pass)."""
    for a, b in zip(layers, layers[1:]):
        if isinstance(a, (Conv2d, Linear)) and isinstance(b, ReLU):
            a.fuse_relu = b.fused = bool(on)


class Tanh(Layer):
    """tanh, the saturating unit of the paper's Figure 1 (`activation="tanh"`). Its units never stop
    passing gradient for good, so there is no activity tracking: alexnet_cuda.health's dead-unit
    fraction is a ReLU measure."""

    tower_rule = "any"

    def __init__(self, name):
        self.name = name

    def forward(self, be, x, train, ctx):
        y = be.tanh_forward(x)
        if train:
            self._cache = y
        return y

    def backward(self, be, dy):
        return be.tanh_backward(dy, self._cache)


class LRN(Layer):
    """Cross-channel LRN with the paper's constants (alpha not divided by size).

    `pool` (set by _pair_lrn_pools: the MaxPool that follows it): forward and backward run the fused
    LRN + max-pool ops (lrn_maxpool_forward/backward), bit for bit the two layers' ops, and the MaxPool
    passes through. Fused, it can fold the backward of a ReLU before it (lrn_maxpool_backward's
    relu_input; the plain lrn_backward cannot)."""

    tower_rule = "window"
    pool = None

    @property
    def can_fold_relu(self):
        return self.pool is not None

    def __init__(self, name, size=5, alpha=1e-4, beta=0.75, k=2.0):
        self.name = name
        self.hp = dict(size=size, alpha=alpha, beta=beta, k=k)

    def _pool_hp(self):
        return dict(pool_size=self.pool.size, pool_stride=self.pool.stride)

    def forward(self, be, x, train, ctx):
        if self.pool is None:
            out, scale = be.lrn_forward(x, **self.hp)
            y = out
        else:
            out, y, scale = be.lrn_maxpool_forward(x, **self.hp, **self._pool_hp())
        if train:
            self._cache = (x, y, scale)
        return out

    def backward(self, be, dy):
        x, y, scale = self._cache
        if self.pool is None:
            return be.lrn_backward(dy, x, y, scale, **self.hp)
        return be.lrn_maxpool_backward(dy, x, y, scale, **self.hp, **self._pool_hp(), relu_input=self.relu_input)


class MaxPool(Layer):
    """Max pooling without padding. `fused_in_lrn` (set by _pair_lrn_pools): the LRN before it computed
    the pooling in its own kernels, so forward and backward pass through. Otherwise its backward can
    fold the backward of a ReLU before it (maxpool_backward's relu_input: x is the ReLU's output)."""

    tower_rule = "any"
    fused_in_lrn = False

    @property
    def can_fold_relu(self):
        return not self.fused_in_lrn

    def __init__(self, name, size=3, stride=2):
        self.name, self.size, self.stride = name, size, stride

    def forward(self, be, x, train, ctx):
        if self.fused_in_lrn:
            return x
        y = be.maxpool_forward(x, size=self.size, stride=self.stride)
        if train:
            self._cache = (x, y)
        return y

    def backward(self, be, dy):
        if self.fused_in_lrn:
            return dy
        x, y = self._cache
        return be.maxpool_backward(dy, x, y, size=self.size, stride=self.stride, relu_input=self.relu_input)


def _pair_lrn_pools(layers, on):
    """Marks each LRN followed by a MaxPool to compute both (`pool`, `fused_in_lrn`); on=False unmarks them.
    For one-device sequences only: with the towers on two devices the LRN is a HaloLRN stage
    (alexnet_cuda.towers), which runs the separate ops. (The ReLU before a fused LRN is folded by
    _fold_relu_backwards, which runs after this.)"""
    for a, b in zip(layers, layers[1:]):
        if isinstance(a, LRN) and isinstance(b, MaxPool):
            a.pool, b.fused_in_lrn = (b if on else None), bool(on)


def _fold_relu_backwards(layers, on):
    """Marks each ReLU followed by a layer that can apply the ReLU's backward in its own (`can_fold_relu`)
    to leave it there (the ReLU's `backward_folded`, the layer's `relu_input`); on=False unmarks every
    layer, and so does a layer that cannot fold (any more: an LRN no longer fused with its pool).
    `layers` must be a sequence the layers run in one after the other: one device's, or one run of a
    tower's layers between two meeting points (alexnet_cuda.towers)."""
    for l in layers:
        l.relu_input = False
        if isinstance(l, ReLU):
            l.backward_folded = False
    if on:
        for a, b in zip(layers, layers[1:]):
            if isinstance(a, ReLU) and b.can_fold_relu:
                a.backward_folded = b.relu_input = True


class Flatten(Layer):
    tower_rule = "any"

    def __init__(self, name):
        self.name = name

    def forward(self, be, x, train, ctx):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, be, dy):
        return dy.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout; the mask is keyed by (model seed, step * 2 + index) and the element's index in
    the whole batch (a data-parallel rank holding rows r0.. of it passes ctx["row0"] = r0). With p > 0 its
    backward can fold the backward of a ReLU before it (dropout_backward's relu_y: its input x, kept)."""

    @property
    def tower_rule(self):
        return "full" if self.p > 0 else "any"

    @property
    def can_fold_relu(self):
        return self.p > 0  # at p = 0 the layer runs no op

    def __init__(self, name, p, index):
        self.name, self.p, self.index = name, p, index

    def forward(self, be, x, train, ctx):
        if not train or self.p == 0:
            self._cache = None
            return x
        y, mask = be.dropout_forward(x, p=self.p, seed=ctx["seed"],
                                     offset=ctx["step"] * AlexNet.DROPOUT_LAYERS + self.index,
                                     start=ctx.get("row0", 0) * (x.size // max(1, x.shape[0])))
        self._cache = (mask, x if self.relu_input else None)
        return y

    def backward(self, be, dy):
        if self._cache is None:
            return dy
        mask, relu_y = self._cache
        return be.dropout_backward(dy, mask, p=self.p, relu_y=relu_y)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------

class AlexNet:
    """The paper's AlexNet on one backend (see the module docstring).

    Attributes: `backend`, `config` (the constructor arguments), `step` (training
    steps taken; keys the dropout masks), `tower_layout`, `layers` (the
    sequence), `momentum` (name -> velocity array, the paper's v), `devices`.

    ``devices``: None or one device (the backend's current one): the towers are computed
    together on it. Two devices (towers=2): tower t on devices[t] (alexnet_cuda.towers); then
    parameters, gradients and velocities are `Sharded` (each tower's rows on its device),
    `state_dict` and the checkpoint hold the same full arrays as with one device.
    """

    DROPOUT_LAYERS = 2

    def __init__(self, num_classes=1000, input_size=227, width=1.0, towers=2, dropout=0.5, lrn=True,
                 backend=None, seed=0, init="paper", dtype=np.float32, devices=None, activation="relu",
                 pool="overlapping", precision="fp32"):
        if int(num_classes) < 1:
            raise ValueError(f"AlexNet: num_classes must be >= 1, got {num_classes}")
        if int(towers) < 1:
            raise ValueError(f"AlexNet: towers must be >= 1, got {towers}")
        if not width > 0:
            raise ValueError(f"AlexNet: width must be > 0, got {width}")
        if not 0 <= dropout < 1:
            raise ValueError(f"AlexNet: dropout must be in [0, 1), got {dropout}")
        if init not in INITS:
            raise ValueError(f"AlexNet: init must be one of {INITS}, got {init!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"AlexNet: activation must be one of {ACTIVATIONS}, got {activation!r}")
        input_size = int(input_size)
        s1, p1, p2, p5 = feature_sizes(input_size, pool)
        if p5 < 1:
            raise ValueError(f"AlexNet: input_size {input_size} is too small: the last max-pool would have no "
                             f"output; the smallest input is {min_input_size(pool)} with {pool} pooling")
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        # The products that have tensor-core kernels (conv and linear, forward and backward)
        # take TF32- or BF16-rounded operands (alexnet_cuda.precision); at bf16 the activations and
        # their gradients are stored in BF16 between layers (conv1's input and the logits stay FP32;
        # weights, momentum, the update and every reduction are FP32).
        self.precision = check_precision("AlexNet", precision)
        self.config = dict(num_classes=int(num_classes), input_size=input_size, width=float(width),
                           towers=int(towers), dropout=float(dropout), lrn=bool(lrn), seed=int(seed), init=init,
                           activation=activation, pool=pool)
        self.num_classes, self.input_size, self.seed = int(num_classes), input_size, int(seed)
        self.step = 0
        self._unseen_bad = None  # see train_step(sync=False)
        self._bad_labels = None  # the same steps' record of a label out of range (take_bad_label)
        T = int(towers)
        ch = {n: scaled_channels(c, width, T) for n, c in BASE_CHANNELS.items()}
        self.channels = ch
        self.tower_layout = TowerLayout(T, tuple((n, ch[n]) for n in TowerLayout.tower_layers))
        self.layers = self._build_layers(ch, p5, pool, activation, lrn, dropout)
        self._param_layers = [l for l in self.layers if l.params]
        self._place(devices)
        self._relu_folds = True  # fold_relu_backwards
        self.fuse_lrn_pools(True)
        self._init(init)
        self.load_momentum_state_dict({n: np.zeros(s, self.dtype) for n, s in self.parameter_shapes().items()})

    def _place(self, devices):
        """Sets `devices` and, for two, the TowerNet that runs the towers on them."""
        be, devices = self.backend, parse_devices(devices)
        self._split = None
        self.devices = devices or (be.current_device(),)
        if len(self.devices) == 1:
            if self.devices[0] != be.current_device():
                raise ValueError(f"AlexNet: a one-device model runs on the current device "
                                 f"({be.current_device()}), not device {self.devices[0]}; pick the card with "
                                 "CUDA_VISIBLE_DEVICES")
            return
        if len(self.devices) != 2:
            raise ValueError(f"AlexNet: the towers run on one or two devices, got devices={self.devices}")
        if self.devices[0] != be.current_device():
            raise ValueError(f"AlexNet: devices[0] must be the current device ({be.current_device()}): the logits "
                             f"and the loss live there; got devices={self.devices}")
        if self.config["towers"] != len(self.devices) or self.num_classes < len(self.devices):
            raise ValueError(f"AlexNet: devices={self.devices} needs towers={len(self.devices)} (got "
                             f"{self.config['towers']}) and at least {len(self.devices)} classes (got "
                             f"{self.num_classes}): tower t's half of every layer runs on devices[t]")
        self._split = TowerNet(be, self.devices, self.layers, self.dtype)

    def _build_layers(self, ch, p5, pool, activation, lrn, dropout):
        g = self.tower_layout.groups
        k, st = _pool_window(pool)
        act = lambda i: (ReLU if activation == "relu" else Tanh)(f"{activation}{i}")  # noqa: E731
        L = []
        # --- the towers ---------------------------------------------------
        L += [Conv2d("conv1", 3, ch["conv1"], 11, stride=4, groups=g("conv1")), act(1)]
        if lrn:
            L.append(LRN("lrn1"))
        L += [MaxPool("pool1", k, st),
              Conv2d("conv2", ch["conv1"], ch["conv2"], 5, padding=2, groups=g("conv2")), act(2)]
        if lrn:
            L.append(LRN("lrn2"))
        L += [MaxPool("pool2", k, st),
              # towers meet: conv3 reads all maps of both towers
              Conv2d("conv3", ch["conv2"], ch["conv3"], 3, padding=1, groups=g("conv3")), act(3),
              Conv2d("conv4", ch["conv3"], ch["conv4"], 3, padding=1, groups=g("conv4")), act(4),
              Conv2d("conv5", ch["conv4"], ch["conv5"], 3, padding=1, groups=g("conv5")), act(5),
              MaxPool("pool5", k, st), Flatten("flatten")]
        # --- the head: towers meet at fc6 ----------------------------------
        L += [Linear("fc6", ch["conv5"] * p5 * p5, ch["fc6"]), act(6), Dropout("drop6", dropout, 0),
              Linear("fc7", ch["fc6"], ch["fc7"]), act(7), Dropout("drop7", dropout, 1),
              Linear("fc8", ch["fc7"], self.num_classes)]
        L[-1].logits = True
        _pair_relus(L, True)
        return L

    # -- parameters ---------------------------------------------------------

    def _init(self, init):
        rng = np.random.default_rng(self.seed)
        positive = {"paper": 1.0, "paper-bias0.1": 0.1}.get(init, 0.0)
        state = {}
        for l in self._param_layers:
            ws = l.shapes["weight"]
            std = math.sqrt(2.0 / l.fan_in) if init == "he" else 0.01
            state[f"{l.name}.weight"] = rng.standard_normal(ws, dtype=np.float64) * std
            state[f"{l.name}.bias"] = np.full(l.shapes["bias"], positive if l.name in POSITIVE_BIAS_LAYERS else 0.0)
        self._set_params({n: np.array(a, dtype=self.dtype) for n, a in state.items()})

    def _set_params(self, state):
        """Take name -> numpy array (private copies of the model's dtype) as the parameters."""
        if self._split is not None:
            self._split.load(state)
            return
        for l in self._param_layers:
            for p in l.params:
                setattr(l, p, self.backend.asarray(state[f"{l.name}.{p}"], dtype=self.dtype))

    def named_parameters(self):
        """[(name, backend array), ...] in layer order: conv1.weight, conv1.bias, ..."""
        if self._split is not None:
            return self._split.named_parameters(self.parameter_shapes())
        return [(f"{l.name}.{p}", getattr(l, p)) for l in self._param_layers for p in l.params]

    def parameter_shapes(self):
        return {f"{l.name}.{p}": tuple(l.shapes[p]) for l in self._param_layers for p in l.params}

    def num_parameters(self):
        return sum(math.prod(s) for s in self.parameter_shapes().values())

    def weight_decays(self, weight_decay=WEIGHT_DECAY):
        """name -> weight decay: `weight_decay` for weights, 0 for biases (as cuda-convnet)."""
        return {n: (weight_decay if n.endswith(".weight") else 0.0) for n, _ in self.named_parameters()}

    def _check_state(self, state, what):
        if not isinstance(state, dict):
            raise TypeError(f"{what}: expected a dict of name -> array, got {type(state).__name__}")
        shapes = self.parameter_shapes()
        missing = [n for n in shapes if n not in state]
        unexpected = [n for n in state if n not in shapes]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected " + ", ".join(map(str, unexpected)))
            raise ValueError(f"{what}: parameter names do not match this model ({'; '.join(parts)})")
        for n, s in shapes.items():
            got = tuple(np.shape(state[n]))
            if got != s:
                raise ValueError(f"{what}: {n} has shape {got}, this model expects {s} "
                                 f"(config {self.config})")

    def state_dict(self):
        """name -> numpy array (a copy), names and shapes as PyTorch holds them."""
        if self._split is not None:
            return self._split.state()
        be = self.backend
        return {n: np.array(be.to_numpy(a), copy=True) for n, a in self.named_parameters()}

    def load_state_dict(self, state):
        """Load weights from name -> array (numpy or anything array-like). Names and shapes must match."""
        self._check_state(state, "load_state_dict")
        # copied: the model updates its arrays in place and must not alias the caller's
        self._set_params({n: np.array(state[n], dtype=self.dtype, copy=True) for n in self.parameter_shapes()})

    def momentum_state_dict(self):
        """name -> numpy copy of the momentum buffer (the paper's v) of each parameter."""
        if self._split is not None:
            return self._split.state(momentum=True)
        be = self.backend
        return {n: np.array(be.to_numpy(a), copy=True) for n, a in self.momentum.items()}

    def load_momentum_state_dict(self, state):
        self._check_state(state, "load_momentum_state_dict")
        be = self.backend
        if self._split is not None:
            self._split.load({n: np.array(state[n], dtype=self.dtype, copy=True) for n in self.parameter_shapes()},
                             momentum=True)
            self.momentum = self._split.sharded_momentum(self.parameter_shapes())
            return
        self.momentum = {n: be.asarray(np.array(state[n], dtype=self.dtype, copy=True), dtype=self.dtype)
                         for n in self.parameter_shapes()}

    def fuse_relus(self, on=True):
        """Compute each ReLU in the forward of the conv or linear layer before it (on, the default) or as its
        own pass (off): the same bits either way, the fused forward skips a read and a write of
        each activation."""
        _pair_relus(self.layers, on)
        for tower in (self._split.towers if self._split is not None else ()):
            _pair_relus(tower, on)

    def fuse_lrn_pools(self, on=True):
        """Compute each LRN and the max-pool after it in one kernel (on, the default) or as separate passes
        (off), the ReLU before the LRN folded into the fused backward while fold_relu_backwards is on: the
        same bits either way; the fused forward skips a read of the LRN output, the fused backward the
        pooled gradient's and the LRN gradient's round trips through memory and the ReLU's pass. With the
        towers on two devices (alexnet_cuda.towers) the LRN exchanges a halo between the towers and the
        layers stay separate: this does nothing there."""
        if self._split is None:
            _pair_lrn_pools(self.layers, on)
        self._fold_relus()

    def fold_relu_backwards(self, on=True):
        """Apply the backward of each ReLU in the backward of the layer after it where that layer can (on, the
        default: relu5 in pool5's, relu6 and relu7 in the dropouts' (p > 0), relu1 and relu2 in the fused
        LRN + max-pools') or as the ReLU's own pass (off): the same bits either way; folded, the ReLU's pass
        (a read of the gradient and of y, a write) is gone. With the towers on two devices only where the
        ReLU and the layer are in one run of a tower's layers (relu5 and pool5): relu6 and relu7 meet their
        dropout across the towers' exchange (alexnet_cuda.towers), which sums the two towers' gradients
        before the ReLU."""
        self._relu_folds = bool(on)
        self._fold_relus()

    def _fold_relus(self):
        runs = [self.layers] if self._split is None else self._split.runs()
        for run in runs:
            _fold_relu_backwards(run, self._relu_folds)

    # -- activity (alexnet_cuda.health) ---------------------------------------

    def track_activity(self, on=True):
        """Switch the ReLU layers' activity tracking on or off (off by default); resets what they hold."""
        relus = [l for l in self.layers if isinstance(l, ReLU)]
        if self._split is not None:
            relus = [p for parts in self._split.relus().values() for p in parts]
        for l in relus:
            l.track, l.active = bool(on), None

    def take_activity(self, reset=True):
        """{relu name: bool backend array (y.shape[1:]) of the units that were > 0 for some example of
        the train-mode forwards since the last reset, or None when none ran}; resets unless reset=False."""
        if self._split is not None:
            return {name: self._split.take_activity(name, reset) for name in self._split.relus()}
        out = {}
        for l in self.layers:
            if isinstance(l, ReLU):
                out[l.name] = l.active
                if reset:
                    l.active = None
        return out

    def set_activity(self, name, mask):
        """Set ReLU `name`'s activity (a mask as take_activity returns; a resumed epoch's)."""
        if self._split is not None:
            self._split.set_activity(name, mask)
            return
        next(l for l in self.layers if l.name == name).active = self.backend.asarray(
            np.array(self.backend.to_numpy(mask), np.bool_, copy=True), dtype=np.bool_)

    def squared_norm(self, a):
        """|a|^2 as a 0-d float64 backend array, for a parameter, gradient or velocity of this model."""
        if self._split is not None:
            return sharded_sq_norm(self.backend, a)
        flat = a.ravel()
        return self.backend.xp.vdot(flat, flat).astype(self.backend.xp.float64)

    def tower_state_dict(self, t):
        """The parameters tower `t` owns: its rows of conv1..conv5 (weights and biases), numpy copies.

        Concatenating the towers' arrays along axis 0 gives the full conv weights.
        fc6..fc8 belong to the merged head and are not part of any tower.
        """
        sd = self.state_dict()
        out = {}
        for name in self.tower_layout.tower_layers:
            sl = self.tower_layout.out_slice(name, t)
            out[f"{name}.weight"] = sd[f"{name}.weight"][sl].copy()
            out[f"{name}.bias"] = sd[f"{name}.bias"][sl].copy()
        return out

    # -- compute ------------------------------------------------------------

    def _input(self, x):
        be = self.backend
        if self._split is not None:  # TowerNet puts it on every tower's device
            if be.device_of(x) is None:
                x = np.asarray(be.to_numpy(x), dtype=self.dtype)
        else:
            x = be.asarray(x, dtype=self.dtype)
        s = self.input_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(f"AlexNet: x has shape {tuple(x.shape)}, expected (N, 3, {s}, {s})")
        return x

    def context(self, row0=0):
        """What each layer's forward reads: the dropout masks' key (seed, step, the index of the batch's
        first row in the global batch) and the precision of the products."""
        return {"seed": self.seed, "step": self.step, "row0": row0, "precision": self.precision}

    def _run(self, x, train, row0=0):
        be = self.backend
        ctx = self.context(row0)
        if self._split is not None:
            return self._split.run(x, train, ctx)
        for l in self.layers:
            x = l.forward(be, x, train, ctx)
        return x

    def forward(self, x, train=False):
        """Logits (N, num_classes) as a backend array. x: (N, 3, S, S), numpy or backend array."""
        x = self._input(x)
        logits = self._run(x, train)
        if not train:
            for l in self.layers:
                l.clear()
            if self._split is not None:
                self._split.clear()
        return logits

    __call__ = forward

    def features(self, x, layer="fc7"):
        """Eval-mode activations after `layer` and its ReLU or tanh (conv1..fc7; fc8 gives the logits),
        e.g. fc7 for the paper's Figure 4 nearest neighbours."""
        names = [l.name for l in self._param_layers]
        if layer not in names:
            raise ValueError(f"features: unknown layer {layer!r}; expected one of {names}")
        stop = layer if layer == "fc8" else self.config["activation"] + layer[-1]
        x = self._input(x)
        be = self.backend
        ctx = self.context()
        if self._split is not None:
            x = self._split.run(x, False, ctx, stop)
            self._split.clear()
        else:
            for l in self.layers:
                x = l.forward(be, x, False, ctx)
                if l.name == stop:
                    break
        return be.from_bf16(x) if be.is_bf16(x) else x  # FP32 for the caller at every precision

    def loss_and_grads(self, x, labels, *, on_grads=None, row0=0, bad_labels=None):
        """Forward (train mode) and backward; fills each parameter's gradient and `last_correct` (the batch's
        examples whose label had the largest logit, a 0-d backend array). Returns the loss (0-d array).

        on_grads(layer), if given, is called as soon as each parameter layer's gradients are complete
        (data parallelism starts averaging them there). row0: the index of x's first row in the global
        batch (keys the dropout masks; 0 for a single process). bad_labels: None (a label out of range
        raises ValueError, after a read back on a GPU) or the loss op's record of one (see
        kernel_ops_layers: nothing is read; the loss is NaN)."""
        be = self.backend
        x = self._input(x)
        with be.use_device(self.devices[0]):  # where the logits are
            labels = be.asarray(labels, dtype=np.int64)
            if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
                raise ValueError(f"AlexNet: labels has shape {tuple(labels.shape)}, expected ({x.shape[0]},)")
            logits = self._run(x, True, row0)
            # the batch's top-1 hits (a 0-d backend array): the training error `train` records per epoch
            self.last_correct = be.topk_correct(logits, labels, 1, bad_labels=bad_labels)
            loss, d = be.softmax_cross_entropy(logits, labels, bad_labels=bad_labels)
        if self._split is not None:
            if on_grads is not None:
                raise ValueError("AlexNet: averaging gradients over data-parallel ranks is not supported with the "
                                 "towers on two devices")
            self._split.backward(d)
            return loss
        for i in range(len(self.layers) - 1, -1, -1):
            l = self.layers[i]
            if i == 0:
                l.backward(be, d, need_dx=False)  # the image needs no gradient
            else:
                d = l.backward(be, d)
            l.clear()
            if on_grads is not None and l.params:
                on_grads(l)
        return loss

    def gradients(self):
        """[(name, gradient backend array), ...] from the last backward pass."""
        if self._split is not None:
            return self._split.gradients(self.parameter_shapes())
        return [(f"{l.name}.{p}", getattr(l, "grad_" + p)) for l in self._param_layers for p in l.params]

    def apply_update(self, lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, *, loss=None):
        """The SGD phase (separate from backward; where a multi-device run would reduce gradients):
        v = momentum*v - wd*lr*w - lr*dw; w += v, with wd = 0 for biases. `loss` (optional, a 0-d backend
        array on the first device): when it is not finite the kernels write nothing (decided on the device)."""
        wds = self.weight_decays(weight_decay)
        if self._split is not None:
            self._split.apply_update(float(lr), float(momentum), wds, loss)
            return
        names = [n for n, _ in self.named_parameters()]
        params = [a for _, a in self.named_parameters()]
        grads = [g for _, g in self.gradients()]
        self.backend.sgd_update_multi(params, grads, [self.momentum[n] for n in names], lr=float(lr),
                                      momentum=float(momentum), weight_decays=[wds[n] for n in names], loss=loss)

    def train_step(self, x, labels, lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, *, average=None, row0=0,
                   sync=True):
        """One SGD step on the batch (x, labels); returns the loss.

        Forward and backward, then the update as its own phase. A non-finite loss skips the update (the
        weights and the momentum stay as they were); `step` advances either way.

        sync=True: the loss is read back and returned as a float, for the caller to stop on.
        sync=False: nothing is read from the device (on a GPU the host goes on queueing the next step): the
        loss is returned as a 0-d backend array and the SGD kernels skip the update themselves. So that the
        weights stay at the last good step until the caller reads the losses, a non-finite loss also skips
        every later sync=False step, up to the next sync=True one. A label out of range does not raise
        then: its step's loss is NaN and take_bad_label() names it when the caller reads the losses.
        With `average` (a distributed.GradientAverager), (x, labels) are rows row0.. of the global
        batch; the gradients and the loss are averaged over the ranks before the update; that loss is an
        all-reduce on the host, so such a step always syncs and returns a float.
        """
        if average is not None:
            loss = self.loss_and_grads(x, labels, on_grads=average.layer_done, row0=row0)
            average.finish()
            loss, self.last_correct = average.step_totals(loss, self.last_correct)
        elif sync:
            loss = float(self.backend.to_numpy(self.loss_and_grads(x, labels)))
        else:
            loss = self.loss_and_grads(x, labels, bad_labels=self._label_record())
            self.apply_update(lr, momentum, weight_decay, loss=self._mark_unseen(loss))
            self.step += 1
            return loss
        self._unseen_bad = None
        if math.isfinite(loss):
            self.apply_update(lr, momentum, weight_decay)
        self.step += 1
        return loss

    def _label_record(self):
        """The int64 pair (first bad row + 1, its label) the loss ops of sync=False steps record a label out of
        range in; zeros while there was none. On the first device, where the logits are."""
        if self._bad_labels is None:
            with self.backend.use_device(self.devices[0]):
                self._bad_labels = self.backend.label_record()
        return self._bad_labels

    def take_bad_label(self):
        """(row, label) of the first label out of range that a sync=False step met since the last call (that
        step's loss is NaN and it skipped its update, as every later sync=False step did), or None; clears
        the record. Reads 16 bytes back."""
        if self._bad_labels is None:
            return None
        be = self.backend
        with be.use_device(self.devices[0]):
            bad = be.read_label_record(self._bad_labels)
            if bad is not None:
                self._bad_labels[...] = 0
        return bad

    def _mark_unseen(self, loss):
        """The 0-d array the SGD kernels of a sync=False step test: 0 while every loss since the last
        sync=True step was finite, NaN from the first that was not on (x*0 is NaN for NaN and +-inf, and a
        NaN stays in the sum). On the first device, where the loss is."""
        be = self.backend
        with be.use_device(self.devices[0]), np.errstate(invalid="ignore"):
            if self._unseen_bad is None:
                self._unseen_bad = be.zeros((), loss.dtype)
            self._unseen_bad += loss * 0
        return self._unseen_bad

    def __repr__(self):
        c = self.config
        return (f"AlexNet(num_classes={c['num_classes']}, input_size={c['input_size']}, width={c['width']}, "
                f"towers={c['towers']}, dropout={c['dropout']}, lrn={c['lrn']}, activation={c['activation']!r}, "
                f"pool={c['pool']!r}, init={c['init']!r}, backend={self.backend.name!r}, "
                + (f"devices={self.devices}, " if self._split is not None else "")
                + f"params={self.num_parameters():,})")


def from_preset(preset, num_classes, *, backend=None, seed=0, **overrides):
    """An AlexNet configured by the named preset ('full' or 'small')."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    kw = dict(num_classes=num_classes, input_size=p["input_size"], width=p["width"], init=p["init"],
              dropout=p["dropout"])
    kw.update(overrides)
    return AlexNet(backend=backend, seed=seed, **kw)
