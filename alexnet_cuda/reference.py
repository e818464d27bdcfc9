"""The NumPy reference of every op: the oracle the CUDA kernels are tested
against, and the ``numpy`` backend.

Conventions shared by every function here:

* Arrays are C-contiguous ``numpy.ndarray`` of dtype float32 or float64
  (labels int32/int64, dropout masks uint8, Philox words uint32). Images are
  NCHW. Weight layouts follow PyTorch: conv weights (K, C/groups, R, S),
  linear weights (out, in).
* Outputs have the dtype of the inputs; every float input of one call must
  share that dtype.
* BF16 storage: the memory-bound ops (relu, tanh, lrn, maxpool, dropout,
  transfer) also take ``ml_dtypes.bfloat16`` activations, all of them or none
  (``_bf16_storage``): the op runs in float32 on the widened values and rounds
  each activation output once to BF16 (nearest even); LRN's ``scale`` stays
  float32, dropout's mask uint8.
  share that dtype. At precision "bf16" the products' x and dy may also be
  BF16 storage (``ml_dtypes.bfloat16``): upcast to float32 (exact), computed
  as the float32 reference, and the outputs that follow them rounded once to
  BF16 (``out_dtype`` of the forwards; dx has x's storage).
* Arguments are checked before anything is computed or written. A wrong
  Python type or dtype raises ``TypeError``; a wrong value, shape, ndim or
  layout raises ``ValueError``. The message starts with the function name and
  names the offending argument, e.g.
  ``conv2d_forward: w has 4 input channels per group, expected 3 (x has C=6, groups=2)``.
* Everything is vectorized over batch, channels and pixels; the only Python
  loops run over kernel offsets (r, s), LRN window offsets, or groups.
  Clarity comes first: this module defines what the kernels must compute.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .checks import activation as _activation, conv_hyper, integer as _int, lrn_params as _lrn_params, probability as _prob, real as _real
from .checks import bf16_storage, flag as _flag, lrn_pool_params as _lrn_pool_params, out_storage, u64 as _u64
from .precision import check_precision, round_to, to_bf16

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "linear_forward",
    "linear_backward",
    "relu_forward",
    "relu_backward",
    "tanh_forward",
    "tanh_backward",
    "lrn_forward",
    "lrn_backward",
    "maxpool_forward",
    "maxpool_backward",
    "lrn_maxpool_forward",
    "lrn_maxpool_backward",
    "philox4x32_10",
    "dropout_mask",
    "dropout_forward",
    "dropout_backward",
    "softmax",
    "softmax_cross_entropy",
    "sgd_update",
    "topk_correct",
    "transfer_forward",
    "transfer_backward",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BF16 = np.dtype(ml_dtypes.bfloat16)
_LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


# ---------------------------------------------------------------------------
# Argument checks (shared helpers; every public function goes through these)
# ---------------------------------------------------------------------------

def _array(fn, name, a, *, ndim=None, dtypes=_FLOAT_DTYPES, like=None):
    """Check that ``a`` is a C-contiguous ndarray with an allowed dtype and
    ndim; with ``like=(other_name, other_array)`` also require other's dtype.
    Returns ``a`` unchanged."""
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{fn}: {name} must be a numpy.ndarray, got {type(a).__module__}.{type(a).__name__}")
    if like is not None:
        other_name, other = like
        if a.dtype != other.dtype:
            raise TypeError(
                f"{fn}: {name} has dtype {a.dtype}, expected {other.dtype} (the dtype of {other_name})")
    elif a.dtype not in dtypes:
        allowed = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{fn}: {name} has dtype {a.dtype}, expected {allowed}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D, got {a.ndim}-D array of shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous (use numpy.ascontiguousarray)")
    return a


def _bf16_storage(*names, keep=()):
    """Decorator: BF16 storage for a memory-bound op whose activation arguments are ``names``.

    When one of them is a bfloat16 array, every one given must be (else TypeError naming it, before
    anything is computed); the op then runs on their float32 values (exact) and each float32 array it
    returns is rounded once to BF16, except the outputs numbered in ``keep`` (LRN's scale). So the BF16
    op is round_bf16(the float32 op on the widened inputs), bit for bit. Float inputs run unchanged."""
    def wrap(op):
        sig = inspect.signature(op)
        fn = op.__name__

        @functools.wraps(op)
        def run(*args, **kwargs):
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:  # a wrong call: the op's own message
                return op(*args, **kwargs)
            given = [n for n in names if bound.arguments.get(n) is not None]
            bf16 = [n for n in given if getattr(bound.arguments[n], "dtype", None) == _BF16]
            if not bf16:
                return op(*args, **kwargs)
            for n in given:
                a = bound.arguments[n]
                if getattr(a, "dtype", None) != _BF16:
                    raise TypeError(f"{fn}: {n} has dtype {getattr(a, 'dtype', type(a).__name__)}, expected bfloat16 "
                                    f"(the storage of {bf16[0]}: all activation arguments or none are BF16)")
            for n in given:
                bound.arguments[n] = _array(fn, n, bound.arguments[n], dtypes=(_BF16,)).astype(np.float32)
            out = op(*bound.args, **bound.kwargs)
            if isinstance(out, tuple):
                return tuple(o if i in keep or o.dtype != np.float32 else to_bf16(o) for i, o in enumerate(out))
            return to_bf16(out)
        return run
    return wrap


def _shape(fn, name, a, expected, why=""):
    """Require ``a.shape == expected``."""
    expected = tuple(int(e) for e in expected)
    if a.shape != expected:
        extra = f" ({why})" if why else ""
        raise ValueError(f"{fn}: {name} has shape {a.shape}, expected {expected}{extra}")


def _labels(fn, labels, n, classes, bad_labels=None):
    """Require labels: 1-D int32/int64 of length n with values in [0, classes); returns the mask of
    the rows whose label is good.

    bad_labels None: a value out of range raises ValueError. Else (the ops' recorded check, for a
    caller that reads it later): bad_labels is an int64 pair; when a label is bad and
    bad_labels[0] is still 0, (first bad row + 1, its label) is written there and nothing raises."""
    _array(fn, "labels", labels, ndim=1, dtypes=_LABEL_DTYPES)
    if labels.shape[0] != n:
        raise ValueError(f"{fn}: labels has {labels.shape[0]} entries, expected {n} (one per row of logits)")
    good = (labels >= 0) & (labels < classes)
    if bad_labels is None:
        if not good.all():
            raise ValueError(f"{fn}: labels must be in [0, {classes}), found {int(labels[~good][0])}")
        return good
    _array(fn, "bad_labels", bad_labels, dtypes=(np.dtype(np.int64),))
    _shape(fn, "bad_labels", bad_labels, (2,), "two int64: the first bad row + 1 and its label")
    if not bad_labels.flags.writeable or np.may_share_memory(bad_labels, labels):
        raise ValueError(f"{fn}: bad_labels must be writeable and apart from labels")
    if not good.all() and bad_labels[0] == 0:
        row = int(np.flatnonzero(~good)[0])
        bad_labels[:] = (row + 1, int(labels[row]))
    return good


def _bias(fn, b, k, like):
    """Require b to be None or a 1-D array of length k with like's dtype."""
    if b is None:
        return
    _array(fn, "b", b, ndim=1, like=like)
    if b.shape[0] != k:
        raise ValueError(f"{fn}: b has length {b.shape[0]}, expected {k} (one per output channel)")


def _rounded(fn, precision, *arrays):
    """The operands of a product at ``precision`` (alexnet_cuda.precision): rounded to TF32 or
    BF16 as the tensor-core kernels round them, in their own dtype; unchanged at fp32."""
    if check_precision(fn, precision) == "fp32":
        return arrays
    return tuple(round_to(precision, a).astype(a.dtype) for a in arrays)


def _is_bf16(a):
    return isinstance(a, np.ndarray) and a.dtype == _BF16


def _widened(fn, precision, name, a):
    """An activation argument of a product (x, dy) as the reference computes with it: BF16 storage
    (which needs precision "bf16") as its float32 values, exactly; anything else as it is."""
    if not _is_bf16(a):
        return a
    bf16_storage(fn, name, check_precision(fn, precision))
    return _array(fn, name, a, dtypes=(_BF16,)).astype(np.float32)


def _out_storage(fn, precision, out_dtype, x_bf16):
    """The storage a forward's output gets: "bf16" or "fp32" (checks.out_storage)."""
    return out_storage(fn, out_dtype, precision=precision, x_bf16=x_bf16, bf16_dtype=_BF16)


def _stored(y, storage):
    """A product's result in its storage: rounded once to BF16 (nearest even), or as it is (a
    float64 result, in the float64 checks, passes through float32 as the kernels' FP32 sums)."""
    return to_bf16(y) if storage == "bf16" else y


def _conv_geometry(fn, x, w, stride, padding, groups):
    """Check a convolution's x, w and hyper-parameters; return
    (stride, padding, groups, P, Q)."""
    _array(fn, "x", x, ndim=4)
    _array(fn, "w", w, ndim=4, like=("x", x))
    stride, padding, groups = conv_hyper(fn, stride, padding, groups)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    if C % groups:
        raise ValueError(f"{fn}: x has C={C} channels, not divisible by groups={groups}")
    if K % groups:
        raise ValueError(f"{fn}: w has K={K} output channels, not divisible by groups={groups}")
    if Cg != C // groups:
        raise ValueError(
            f"{fn}: w has {Cg} input channels per group, expected {C // groups} "
            f"(x has C={C}, groups={groups})")
    if R < 1 or S < 1:
        raise ValueError(f"{fn}: w has an empty kernel {R}x{S}")
    Hp, Wp = H + 2 * padding, W + 2 * padding
    if R > Hp or S > Wp:
        raise ValueError(
            f"{fn}: w kernel {R}x{S} is larger than the padded input x "
            f"{Hp}x{Wp} (H={H}, W={W}, padding={padding})")
    P = (Hp - R) // stride + 1
    Q = (Wp - S) // stride + 1
    return stride, padding, groups, P, Q


def _pool_params(fn, x, size, stride):
    """Check max-pooling hyper-parameters against x (N,C,H,W); return
    (size, stride, P, Q)."""
    size = _int(fn, "size", size, minimum=1)
    stride = _int(fn, "stride", stride, minimum=1)
    H, W = x.shape[2], x.shape[3]
    if size > H or size > W:
        raise ValueError(f"{fn}: size={size} pooling window is larger than the input x ({H}x{W})")
    return size, stride, (H - size) // stride + 1, (W - size) // stride + 1


# ---------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------

def _windows(xp, R, S, stride):
    """View of xp (N,C,Hp,Wp) as (N,C,P,Q,R,S): windows[n,c,p,q,r,s] =
    xp[n, c, p*stride + r, q*stride + s]. No copy."""
    return sliding_window_view(xp, (R, S), axis=(2, 3))[:, :, ::stride, ::stride]


def _pad_hw(x, padding):
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def _activate(y, activation):
    """y with the fused activation applied in place: relu_forward's max(0, y) on the values y holds."""
    if activation == "relu":
        np.maximum(y, y.dtype.type(0), out=y)
    return y


def conv2d_forward(x, w, b, *, stride=1, padding=0, groups=1, precision="fp32", activation="none",
                   out_dtype=None):
    """Grouped 2-D cross-correlation (what deep learning calls convolution).

    With xp = x zero-padded by ``padding`` on each side of H and W,
    Cg = C/groups, Kg = K/groups and g = k // Kg the group of output channel k:

        y[n,k,p,q] = b[k] + sum_{c<Cg, r<R, s<S}
                     w[k,c,r,s] * xp[n, g*Cg + c, p*stride + r, q*stride + s]

    x (N,C,H,W), w (K,Cg,R,S), b (K,) or None -> y (N,K,P,Q) with
    P = (H + 2*padding - R)//stride + 1 and Q likewise. At ``precision`` tf32 or
    bf16, x and w are rounded first (alexnet_cuda.precision), as the tensor-core kernels do.
    ``activation="relu"`` returns relu_forward(y), bit for bit: the ReLU fused into the kernels'
    epilogue (at every precision: the max of the FP32 output).

    BF16 storage (precision "bf16" only): x may be ml_dtypes.bfloat16 (w and b stay float32);
    ``out_dtype`` picks y's storage: None (x's), "fp32" or numpy.float32 (the float dtype of the
    computation), "bf16" or ml_dtypes.bfloat16 (the float32 result, bias and activation included,
    rounded once to nearest even).
    """
    fn = "conv2d_forward"
    x_bf16 = _is_bf16(x)
    x = _widened(fn, precision, "x", x)
    storage = _out_storage(fn, precision, out_dtype, x_bf16)
    stride, padding, groups, P, Q = _conv_geometry(fn, x, w, stride, padding, groups)
    activation = _activation(fn, activation)
    K, Cg, R, S = w.shape
    _bias(fn, b, K, ("x", x))
    x, w = _rounded(fn, precision, x, w)
    N = x.shape[0]
    Kg = K // groups
    win = _windows(_pad_hw(x, padding), R, S, stride)          # (N,C,P,Q,R,S)
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        # contract over (c, r, s): (N,P,Q,Kg)
        yg = np.tensordot(win[:, cs], w[ks], axes=([1, 4, 5], [1, 2, 3]))
        y[:, ks] = yg.transpose(0, 3, 1, 2)
    if b is not None:
        y += b[None, :, None, None]
    return _stored(_activate(y, activation), storage)


def conv2d_backward(dy, x, w, *, stride=1, padding=0, groups=1, need_dx=True, precision="fp32", relu_input=False):
    """Gradients of ``conv2d_forward`` given dy = dL/dy (N,K,P,Q):

        db[k]       = sum_{n,p,q} dy[n,k,p,q]
        dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, g*Cg + c, p*stride + r, q*stride + s]
        dxp[n, g*Cg + c, p*stride + r, q*stride + s] += sum_{k in group g} dy[n,k,p,q] * w[k,c,r,s]

    and dx is dxp with the padding cropped off. Returns (dx, dw, db) with the
    shapes of x, w and (K,). need_dx=False skips dx and returns None in its place
    (the first layer: the image needs no gradient).

    At ``precision`` tf32 or bf16, dy, x and w are rounded first, as the tensor-core kernels
    round them (each operand of dx and dw as it is staged); db sums dy as it is at tf32 and
    the BF16 dy at bf16 (dy as stored in BF16), as ``linear_backward`` does. At bf16, dy and x
    may be BF16 storage (ml_dtypes.bfloat16, each independently); dx then has x's storage
    (rounded once), dw and db are float32.

    ``relu_input=True``: x is a ReLU's output and its backward is applied to dx as well:
    dx = relu_backward(dx, x), x as given (not rounded to the precision), bit for bit; the kernel
    backends do it in the data gradient's store. Nothing changes when need_dx is False.
    """
    fn = "conv2d_backward"
    relu_input = _flag(fn, "relu_input", relu_input)
    x_in = x  # as stored: the ReLU's output for relu_input
    x_bf16 = _is_bf16(x)
    dy = _widened(fn, precision, "dy", dy)
    x = _widened(fn, precision, "x", x)
    stride, padding, groups, P, Q = _conv_geometry(fn, x, w, stride, padding, groups)
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    _array(fn, "dy", dy, ndim=4, like=("x", x))
    _shape(fn, "dy", dy, (N, K, P, Q), "the shape of conv2d_forward's output")
    Kg = K // groups

    dyr, x, w = _rounded(fn, precision, dy, x, w)
    db = (dyr if precision == "bf16" else dy).sum(axis=(0, 2, 3))
    dy = dyr
    win = _windows(_pad_hw(x, padding), R, S, stride)          # (N,C,P,Q,R,S)
    dw = np.empty_like(w)
    dxp = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype) if need_dx else None
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        dyg = dy[:, ks]                                         # (N,Kg,P,Q)
        dw[ks] = np.tensordot(dyg, win[:, cs], axes=([0, 2, 3], [0, 2, 3]))
        if not need_dx:
            continue
        for r in range(R):
            for s in range(S):
                # (N,Kg,P,Q) x (Kg,Cg) -> (N,P,Q,Cg)
                contrib = np.tensordot(dyg, w[ks, :, r, s], axes=([1], [0]))
                dxp[:, cs, r:r + stride * P:stride, s:s + stride * Q:stride] += \
                    contrib.transpose(0, 3, 1, 2)
    if not need_dx:
        return None, dw, db
    dx = _stored(np.ascontiguousarray(dxp[:, :, padding:padding + H, padding:padding + W]),
                 "bf16" if x_bf16 else "fp32")
    return (relu_backward(dx, x_in) if relu_input else dx), dw, db


# ---------------------------------------------------------------------------
# Fully connected
# ---------------------------------------------------------------------------

def _linear_args(fn, x, w):
    _array(fn, "x", x, ndim=2)
    _array(fn, "w", w, ndim=2, like=("x", x))
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"{fn}: w has {w.shape[1]} input features, expected {x.shape[1]} (x has shape {x.shape})")


def linear_forward(x, w, b, *, precision="fp32", activation="none", out_dtype=None):
    """Fully connected layer: y[n,o] = sum_i x[n,i] * w[o,i] + b[o],
    i.e. y = x @ w.T + b. x (N,I), w (O,I), b (O,) or None -> y (N,O).
    At ``precision`` tf32 or bf16, x and w are rounded first (the bias is not).
    ``activation="relu"`` returns relu_forward(y), as conv2d_forward's; BF16 x and
    ``out_dtype`` as conv2d_forward's."""
    fn = "linear_forward"
    x_bf16 = _is_bf16(x)
    x = _widened(fn, precision, "x", x)
    storage = _out_storage(fn, precision, out_dtype, x_bf16)
    _linear_args(fn, x, w)
    activation = _activation(fn, activation)
    _bias(fn, b, w.shape[0], ("x", x))
    x, w = _rounded(fn, precision, x, w)
    y = x @ w.T
    if b is not None:
        y += b
    return _stored(_activate(y, activation), storage)


def linear_backward(dy, x, w, *, precision="fp32"):
    """Gradients of ``linear_forward`` given dy (N,O):
    dx = dy @ w (N,I), dw = dy.T @ x (O,I), db = sum_n dy[n] (O,).
    At tf32 the operands of dx and dw are rounded to TF32 (db sums dy as it is); at bf16
    dy, x and w are BF16 values (dy as stored in BF16, so db sums the rounded dy too). BF16
    storage of dy and x as in conv2d_backward (dx has x's storage)."""
    fn = "linear_backward"
    x_bf16 = _is_bf16(x)
    dy = _widened(fn, precision, "dy", dy)
    x = _widened(fn, precision, "x", x)
    _linear_args(fn, x, w)
    _array(fn, "dy", dy, ndim=2, like=("x", x))
    _shape(fn, "dy", dy, (x.shape[0], w.shape[0]), "(N, O) from x and w")
    dyr, x, w = _rounded(fn, precision, dy, x, w)
    dx = _stored(dyr @ w, "bf16" if x_bf16 else "fp32")
    return dx, dyr.T @ x, (dyr if precision == "bf16" else dy).sum(axis=0)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------

@_bf16_storage("x")
def relu_forward(x):
    """y = max(0, x), elementwise, any shape."""
    _array("relu_forward", "x", x)
    return np.maximum(x, x.dtype.type(0))


@_bf16_storage("dy", "y")
def relu_backward(dy, y):
    """dx = dy where y > 0, else 0 (y is the forward output)."""
    fn = "relu_backward"
    _array(fn, "y", y)
    _array(fn, "dy", dy, like=("y", y))
    _shape(fn, "dy", dy, y.shape, "the shape of y")
    return np.where(y > 0, dy, dy.dtype.type(0))


# ---------------------------------------------------------------------------
# tanh (the saturating unit the paper's Figure 1 compares ReLU with)
# ---------------------------------------------------------------------------

@_bf16_storage("x")
def tanh_forward(x):
    """y = tanh(x), elementwise, any shape."""
    _array("tanh_forward", "x", x)
    return np.tanh(x)


@_bf16_storage("dy", "y")
def tanh_backward(dy, y):
    """dx = dy * (1 - y^2), y the forward output; computed as dy * ((1 - y) * (1 + y)), the kernels'
    order (1 - y is exact where y nears +-1)."""
    fn = "tanh_backward"
    _array(fn, "y", y)
    _array(fn, "dy", dy, like=("y", y))
    _shape(fn, "dy", dy, y.shape, "the shape of y")
    one = y.dtype.type(1)
    return dy * ((one - y) * (one + y))


# ---------------------------------------------------------------------------
# Local response normalization (across channels)
# ---------------------------------------------------------------------------

def _channel_window_sum(t, size):
    """out[n,c,h,w] = sum of t[n,c',h,w] over c' in [c - size//2, c + size//2]
    clipped to [0, C-1] (done as a sum of shifted slices of a zero-padded copy)."""
    half = size // 2
    C = t.shape[1]
    tp = np.pad(t, ((0, 0), (half, half), (0, 0), (0, 0)))
    out = np.zeros_like(t)
    for d in range(size):
        out += tp[:, d:d + C]
    return out


def _lrn_check_x(fn, x):
    _array(fn, "x", x, ndim=4)


@_bf16_storage("x", keep=(1,))
def lrn_forward(x, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False):
    """Local response normalization across channels (paper §3.3).

        scale[n,c,h,w] = k + a * sum_{c' in win(c)} x[n,c',h,w]**2
        y = x * scale**(-beta)

    where win(c) = [c - size//2, c + size//2] clipped to [0, C-1] (a window
    near the first or last channel simply has fewer terms) and ``a`` is:

    * ``alpha_scaled=False`` (default, the paper's formula): a = alpha;
    * ``alpha_scaled=True`` (cuda-convnet, Caffe and PyTorch's
      ``local_response_norm``): a = alpha / size.

    The paper's constants are size=5, alpha=1e-4, beta=0.75, k=2.
    x (N,C,H,W) -> (y, scale), both of x's shape; scale is kept for the
    backward pass.
    """
    fn = "lrn_forward"
    _lrn_check_x(fn, x)
    size, a, beta, k = _lrn_params(fn, size, alpha, beta, k, alpha_scaled)
    scale = k + a * _channel_window_sum(x * x, size)
    y = x * scale ** (-beta)
    return y, scale


@_bf16_storage("dy", "x", "y")
def lrn_backward(dy, x, y, scale, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False):
    """Gradient of ``lrn_forward`` (same hyper-parameters, same ``a``):

        dx[j] = dy[j] * scale[j]**(-beta)
                - 2 * a * beta * x[j] * sum_{c in win(j)} dy[c] * y[c] / scale[c]

    (per n, h, w; the window is symmetric, so "c whose window contains j" is
    win(j)). ``k`` is accepted for a uniform signature; it only enters
    through ``scale``.
    """
    fn = "lrn_backward"
    _lrn_check_x(fn, x)
    for name, a_ in (("dy", dy), ("y", y), ("scale", scale)):
        _array(fn, name, a_, ndim=4, like=("x", x))
        _shape(fn, name, a_, x.shape, "the shape of x")
    size, a, beta, k = _lrn_params(fn, size, alpha, beta, k, alpha_scaled)
    cross = _channel_window_sum(dy * y / scale, size)
    return dy * scale ** (-beta) - (2.0 * a * beta) * x * cross


# ---------------------------------------------------------------------------
# Max pooling
# ---------------------------------------------------------------------------

@_bf16_storage("x")
def maxpool_forward(x, *, size=3, stride=2):
    """Max pooling without padding (paper §3.4 overlapping pooling: 3/2).

        y[n,c,p,q] = max_{r,s < size} x[n, c, p*stride + r, q*stride + s]

    x (N,C,H,W) -> y (N,C,P,Q), P = (H - size)//stride + 1, Q likewise.
    """
    fn = "maxpool_forward"
    _array(fn, "x", x, ndim=4)
    size, stride, P, Q = _pool_params(fn, x, size, stride)
    return np.ascontiguousarray(_windows(x, size, size, stride).max(axis=(4, 5)))


@_bf16_storage("dy", "x", "y")
def maxpool_backward(dy, x, y, *, size=3, stride=2, relu_input=False):
    """Gradient of ``maxpool_forward``.

    Each dy[n,c,p,q] goes to ONE input: the first maximum of its window in
    row-major order (smallest r, then smallest s). Windows overlap when
    stride < size; their contributions to a shared input add up. The argmax
    is taken from x; ``y`` (the forward output) is checked for shape only.
    With ``relu_input=True`` x is a ReLU's output and the ReLU's backward is
    applied too: ``relu_backward(dx, x)`` (dx = +0 where x <= 0), so the ReLU
    layer skips its own.
    """
    fn = "maxpool_backward"
    _array(fn, "x", x, ndim=4)
    size, stride, P, Q = _pool_params(fn, x, size, stride)
    relu_input = _flag(fn, "relu_input", relu_input)
    N, C = x.shape[:2]
    for name, a_ in (("y", y), ("dy", dy)):
        _array(fn, name, a_, ndim=4, like=("x", x))
        _shape(fn, name, a_, (N, C, P, Q), "the shape of maxpool_forward's output")
    win = _windows(x, size, size, stride).reshape(N, C, P, Q, size * size)
    first = win.argmax(axis=-1)            # argmax returns the first maximum
    dx = np.zeros_like(x)
    zero = dy.dtype.type(0)
    for r in range(size):
        for s in range(size):
            dx[:, :, r:r + stride * P:stride, s:s + stride * Q:stride] += \
                np.where(first == r * size + s, dy, zero)
    return relu_backward(dx, x) if relu_input else dx


# ---------------------------------------------------------------------------
# LRN and the max pooling after it, as one op (the kernels fuse them: lrn_pool.cu)
# ---------------------------------------------------------------------------

def _lrn_pool_args(fn, x, size, alpha, beta, k, alpha_scaled, pool_size, pool_stride, relu_input=False):
    """Check x (N,C,H,W) and the hyper-parameters of the fused ops; return (lrn kwargs, pool kwargs,
    relu_input, (N, C, P, Q)). x may be BF16 storage: the composed ops then run at BF16 storage, rounding
    where the kernels store (lrn_y, y_pool, the pooled gradient, dx)."""
    _lrn_check_x(fn, x.astype(np.float32) if getattr(x, "dtype", None) == _BF16 else x)
    _, _, _, _, pool_size, pool_stride, relu_input = _lrn_pool_params(
        fn, size, alpha, beta, k, alpha_scaled, pool_size, pool_stride, relu_input)
    N, C, H, W = x.shape
    if pool_size > H or pool_size > W:
        raise ValueError(f"{fn}: pool_size={pool_size} pooling window is larger than the input x ({H}x{W})")
    pooled = (N, C, (H - pool_size) // pool_stride + 1, (W - pool_size) // pool_stride + 1)
    lrn = dict(size=size, alpha=alpha, beta=beta, k=k, alpha_scaled=alpha_scaled)
    return lrn, dict(size=pool_size, stride=pool_stride), relu_input, pooled


def lrn_maxpool_forward(x, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False, pool_size=3, pool_stride=2):
    """``lrn_forward`` then ``maxpool_forward`` of its output (AlexNet's LRN and max-pool after conv1
    and conv2): ``(y_pool, lrn_y, scale)``; lrn_y and scale are what the backward needs. The kernels
    compute it in one pass (the pooling reads the LRN output where it was computed)."""
    lrn, pool, _, _ = _lrn_pool_args("lrn_maxpool_forward", x, size, alpha, beta, k, alpha_scaled, pool_size,
                                     pool_stride)
    y, scale = lrn_forward(x, **lrn)
    return maxpool_forward(y, **pool), y, scale


def lrn_maxpool_backward(dy_pool, x, lrn_y, scale, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False,
                         pool_size=3, pool_stride=2, relu_input=False):
    """Gradient of ``lrn_maxpool_forward``: ``lrn_backward(maxpool_backward(dy_pool, lrn_y), x, lrn_y, scale)``.
    With ``relu_input=True`` x is a ReLU's output and the ReLU's backward is applied too:
    ``relu_backward(dx, x)`` (dx = 0 where x <= 0), so the ReLU layer skips its own."""
    fn = "lrn_maxpool_backward"
    lrn, pool, relu_input, pooled = _lrn_pool_args(fn, x, size, alpha, beta, k, alpha_scaled, pool_size,
                                                   pool_stride, relu_input)
    bf16 = x.dtype == _BF16  # BF16 storage: dy_pool and lrn_y BF16 too, scale float32
    act = dict(dtypes=(_BF16,)) if bf16 else dict(like=("x", x))
    _array(fn, "dy_pool", dy_pool, ndim=4, **act)
    _shape(fn, "dy_pool", dy_pool, pooled, "the pooled shape of x")
    for name, a_ in (("lrn_y", lrn_y), ("scale", scale)):
        _array(fn, name, a_, ndim=4, **(dict(dtypes=(np.dtype(np.float32),)) if bf16 and name == "scale" else act))
        _shape(fn, name, a_, x.shape, "the shape of x")
    # maxpool_backward checks its y argument for shape only: dy_pool has that shape
    dx = lrn_backward(maxpool_backward(dy_pool, lrn_y, dy_pool, **pool), x, lrn_y, scale, **lrn)
    return relu_backward(dx, x) if relu_input else dx


# ---------------------------------------------------------------------------
# Philox-4x32-10 and dropout
# ---------------------------------------------------------------------------

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint32(0x9E3779B9)
_PHILOX_W1 = np.uint32(0xBB67AE85)
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _mulhilo32(m, a):
    """(hi, lo) 32-bit halves of the 64-bit product m * a (a uint32 array)."""
    prod = m * a.astype(np.uint64)
    return (prod >> _SHIFT32).astype(np.uint32), (prod & _LO32).astype(np.uint32)


def philox4x32_10(counter, key):
    """Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, SC 2011, "Parallel random
    numbers: as easy as 1, 2, 3"), vectorized over trailing axes.

    counter: (4, ...) uint32 words c0..c3; key: (2,) or (2, ...) uint32 words
    k0, k1 (broadcast against the counter's trailing axes). One round:

        (hi0, lo0) = mulhilo32(0xD2511F53, c0)
        (hi1, lo1) = mulhilo32(0xCD9E8D57, c2)
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

    Ten rounds; between rounds k0 += 0x9E3779B9 and k1 += 0xBB67AE85 (mod
    2**32). Returns a (4, ...) uint32 array, the shape of the broadcast.
    """
    fn = "philox4x32_10"
    _array(fn, "counter", counter, dtypes=(np.dtype(np.uint32),))
    _array(fn, "key", key, dtypes=(np.dtype(np.uint32),))
    if counter.ndim < 1 or counter.shape[0] != 4:
        raise ValueError(f"{fn}: counter must have shape (4, ...), got {counter.shape}")
    if key.ndim < 1 or key.shape[0] != 2:
        raise ValueError(f"{fn}: key must have shape (2,) or (2, ...), got {key.shape}")
    try:
        shape = np.broadcast_shapes(counter.shape[1:], key.shape[1:])
    except ValueError:
        raise ValueError(
            f"{fn}: key trailing shape {key.shape[1:]} does not broadcast with "
            f"counter trailing shape {counter.shape[1:]}") from None
    c0, c1, c2, c3 = (np.broadcast_to(c, shape) for c in counter)
    k0, k1 = (np.broadcast_to(k, shape) for k in key)
    with np.errstate(over="ignore"):
        for rnd in range(10):
            if rnd:
                k0 = k0 + _PHILOX_W0    # uint32 arithmetic wraps mod 2**32
                k1 = k1 + _PHILOX_W1
            hi0, lo0 = _mulhilo32(_PHILOX_M0, c0)
            hi1, lo1 = _mulhilo32(_PHILOX_M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3]).astype(np.uint32, copy=False)


def _dropout_threshold(p):
    """t = min(2**24, ceil(p * 2**24)), with p a double."""
    return min(1 << 24, math.ceil(p * float(1 << 24)))


def _shape_arg(fn, shape):
    if isinstance(shape, (bool, np.bool_)):
        raise TypeError(f"{fn}: shape must be a tuple of integers, got bool")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"{fn}: shape must be a tuple of integers, got {type(shape).__name__}") from None
    return tuple(_int(fn, f"shape[{i}]", d, minimum=0) for i, d in enumerate(dims))


def dropout_mask(shape, *, p, seed, offset=0, start=0):
    """The dropout keep-mask (uint8, 1 = kept) of the given shape: a pure
    function of (seed, offset, element index), bit for bit what the kernels
    compute.

    Element k of the array (flat C-order) has index i = start + k: a process
    holding rows r0.. of a larger batch passes start = r0 * (elements per row)
    and gets exactly those rows of the whole batch's mask (data parallelism).
    For element index i (uint64), group = i // 4, lane = i % 4:

        counter = (group & 0xffffffff, group >> 32, offset & 0xffffffff, offset >> 32)
        key     = (seed & 0xffffffff, seed >> 32)
        r       = philox4x32_10(counter, key)[lane]
        t       = min(2**24, ceil(p * 2**24))     (p a double)
        mask[i] = 1 if (r >> 8) >= t else 0

    so P(keep) = 1 - t / 2**24 (p rounded up to a multiple of 2**-24).
    seed, offset and start are integers in [0, 2**64); p in [0, 1).
    """
    fn = "dropout_mask"
    shape = _shape_arg(fn, shape)
    p = _prob(fn, "p", p)
    seed = _u64(fn, "seed", seed)
    offset = _u64(fn, "offset", offset)
    start = _u64(fn, "start", start)
    n = math.prod(shape)
    if start + n > 2**64:
        raise ValueError(f"{fn}: start + size must be <= 2**64, got {start} + {n}")
    return _dropout_keep_range(start, n, p, seed, offset).astype(np.uint8).reshape(shape)


def _dropout_keep_range(start, n, p, seed, offset):
    """keep flags (bool, (n,)) of flat element indices start .. start+n-1,
    following the definition in ``dropout_mask``. Philox runs once per group
    of 4 elements; ``start`` lets tests reach indices beyond 2**32."""
    first, last = start // 4, (start + n + 3) // 4           # groups touched
    groups = np.arange(first, last, dtype=np.uint64)
    counter = np.empty((4, groups.size), dtype=np.uint32)
    counter[0] = groups & _LO32
    counter[1] = groups >> _SHIFT32
    counter[2] = offset & 0xFFFFFFFF
    counter[3] = offset >> 32
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    r = philox4x32_10(counter, key)                          # r[lane, group]
    lead = start - 4 * first
    r = r.T.reshape(-1)[lead:lead + n]                       # element 4*group + lane
    return (r >> np.uint32(8)) >= np.uint32(_dropout_threshold(p))


def _dropout_scale(dtype, p):
    """1/(1-p) computed in double, rounded to dtype."""
    return dtype.type(1.0 / (1.0 - p))


@_bf16_storage("x")
def dropout_forward(x, *, p=0.5, seed, offset=0, start=0):
    """Inverted dropout (paper §4.2, scaled at training time instead of test):

        mask = dropout_mask(x.shape, p=p, seed=seed, offset=offset, start=start)
        y    = (x * mask) * scale,   scale = dtype(1 / (1 - p))

    Returns (y, mask). At test time dropout is the identity.
    """
    fn = "dropout_forward"
    _array(fn, "x", x)
    p = _prob(fn, "p", p)
    mask = dropout_mask(x.shape, p=p, seed=seed, offset=offset, start=start)
    return x * mask * _dropout_scale(x.dtype, p), mask


@_bf16_storage("dy", "relu_y")
def dropout_backward(dy, mask, *, p=0.5, relu_y=None):
    """Gradient of ``dropout_forward``: dx = (dy * mask) * scale.

    ``relu_y`` (optional): the output of the ReLU before the dropout (the
    dropout's input x); the ReLU's backward is then applied too:
    ``relu_backward(dx, relu_y)`` (dx = +0 where relu_y <= 0), so the ReLU
    layer skips its own. (Folding the ReLU's mask into the dropout mask
    instead would give dy * 0 = -0 for negative dy, not relu_backward's +0.)
    """
    fn = "dropout_backward"
    _array(fn, "dy", dy)
    _array(fn, "mask", mask, dtypes=(np.dtype(np.uint8),))
    _shape(fn, "mask", mask, dy.shape, "the shape of dy")
    if relu_y is not None:
        _array(fn, "relu_y", relu_y, like=("dy", dy))
        _shape(fn, "relu_y", relu_y, dy.shape, "the shape of dy")
    p = _prob(fn, "p", p)
    dx = dy * mask * _dropout_scale(dy.dtype, p)
    return dx if relu_y is None else relu_backward(dx, relu_y)


# ---------------------------------------------------------------------------
# Loss, optimizer, metric
# ---------------------------------------------------------------------------

def _logits_labels(fn, logits, labels, bad_labels=None):
    """Checks (logits, labels) as _labels does; returns (the rows, their labels with the bad ones
    replaced by 0, the mask of good rows)."""
    _array(fn, "logits", logits, ndim=2)
    N, classes = logits.shape
    if N < 1 or classes < 1:
        raise ValueError(f"{fn}: logits must have at least one row and one class, got shape {logits.shape}")
    good = _labels(fn, labels, N, classes, bad_labels)
    return np.arange(N), np.where(good, labels, 0), good


def softmax(logits, xp=np):
    """Row-wise softmax of (N, classes) logits, stable (the row maximum subtracted first).

    `xp` is the array module of `logits` (numpy, or cupy for arrays on a GPU); the result
    has the dtype of `logits`. The one softmax of the package: evaluation, prediction and
    the pictures use it."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels, *, bad_labels=None):
    """Mean softmax cross-entropy over the batch and its gradient.

        m[n]     = max_j logits[n,j]
        lse[n]   = m[n] + log sum_j exp(logits[n,j] - m[n])     (stable)
        loss     = mean_n (lse[n] - logits[n, labels[n]])
        dlogits  = (softmax(logits) - onehot(labels)) / N

    logits (N, classes) float, labels (N,) int32/int64 in [0, classes).
    Returns (loss as a 0-d array of logits' dtype, dlogits (N, classes)).
    bad_labels (an int64 pair, see _labels): a label out of range is recorded there instead of
    raising; its row's loss is NaN (so the mean is) and its dlogits row has no one-hot term.
    """
    fn = "softmax_cross_entropy"
    rows, safe, good = _logits_labels(fn, logits, labels, bad_labels)
    N = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    sumexp = e.sum(axis=1)
    logp_label = np.where(good, z[rows, safe] - np.log(sumexp), np.nan)
    loss = np.asarray(-logp_label.mean(), dtype=logits.dtype)
    dlogits = e / sumexp[:, None]
    dlogits[rows[good], safe[good]] -= 1
    dlogits /= N
    return loss, dlogits


def _skips_update(fn, loss):
    """Whether an SGD op with this `loss` writes nothing: loss is None (always update) or one float value
    in an ndarray; True when it is NaN or infinite (the non-finite-loss rule of a training step)."""
    if loss is None:
        return False
    _array(fn, "loss", loss)
    if loss.size != 1:
        raise ValueError(f"{fn}: loss must hold one value (a 0-d array), got shape {loss.shape}")
    return not np.isfinite(loss.reshape(()))


def sgd_update(w, dw, v, *, lr, momentum=0.9, weight_decay=5e-4, loss=None):
    """SGD with momentum and weight decay, the paper's rule (§5), in place:

        v = momentum * v - weight_decay * lr * w - lr * dw
        w = w + v

    Computed in w's dtype (the Python scalars follow it). Returns None. `loss` (optional, a 0-d
    array): when it is not finite, nothing is written (w and v stay as they were).
    """
    fn = "sgd_update"
    _array(fn, "w", w)
    _array(fn, "dw", dw, like=("w", w))
    _array(fn, "v", v, like=("w", w))
    _shape(fn, "dw", dw, w.shape, "the shape of w")
    _shape(fn, "v", v, w.shape, "the shape of w")
    lr = _real(fn, "lr", lr)
    momentum = _real(fn, "momentum", momentum)
    weight_decay = _real(fn, "weight_decay", weight_decay)
    if np.may_share_memory(w, v):
        raise ValueError(f"{fn}: v must not share memory with w")
    for name, a_ in (("w", w), ("v", v)):
        if not a_.flags.writeable:
            raise ValueError(f"{fn}: {name} must be writeable (it is updated in place)")
    if _skips_update(fn, loss):
        return None
    v[...] = momentum * v - weight_decay * lr * w - lr * dw
    w += v
    return None


def topk_correct(logits, labels, k, *, bad_labels=None):
    """Number of rows n whose label is in the top k:

        correct[n] = #{j : logits[n,j] > logits[n, labels[n]]} < k

    (ties count in the label's favour: only strictly greater logits rank
    ahead of it). Returns a 0-d int64 array. bad_labels as softmax_cross_entropy's
    (a row with a bad label is not counted).
    """
    fn = "topk_correct"
    k = _int(fn, "k", k, minimum=1)
    rows, safe, good = _logits_labels(fn, logits, labels, bad_labels)
    label_logit = logits[rows, safe]
    ahead = (logits > label_logit[:, None]).sum(axis=1)
    return np.asarray(((ahead < k) & good).sum(), dtype=np.int64)


# ---------------------------------------------------------------------------
# Where towers meet (the transfer kernels of csrc/kernels/transfer.cu)
# ---------------------------------------------------------------------------

def _tower_slice(fn, name, a, cat_name, cat, offset):
    """Require a (one tower's maps or features) to fit at channel `offset` of cat (the concatenation)."""
    offset = _int(fn, "offset", offset, minimum=0)
    if a.ndim not in (2, 4):
        raise ValueError(f"{fn}: {name} must be (N, C, H, W) or (N, F), got shape {a.shape}")
    if cat.ndim != a.ndim or cat.shape[:1] + cat.shape[2:] != a.shape[:1] + a.shape[2:]:
        raise ValueError(f"{fn}: {cat_name} has shape {cat.shape} but {name} {a.shape}: they may differ only in "
                         "dimension 1")
    if offset + a.shape[1] > cat.shape[1]:
        raise ValueError(f"{fn}: offset {offset} + {a.shape[1]} channels of {name} exceeds the {cat.shape[1]} "
                         f"channels of {cat_name}")
    return offset


def transfer_forward(src, dst, *, offset, src_offset=0, channels=None):
    """dst[:, offset:offset + channels] = src[:, src_offset:src_offset + channels] (channels None: the rest
    of src), in place; returns dst. float32, float64 or BF16 (a copy: the elements as they are). On the
    kernel backends src may live on a peer device (read over peer access)."""
    fn = "transfer_forward"
    _array(fn, "src", src, dtypes=_FLOAT_DTYPES + (_BF16,))   # a copy: BF16 storage as it is
    _array(fn, "dst", dst, like=("src", src))
    src_offset = _int(fn, "src_offset", src_offset, minimum=0)
    channels = src.shape[1] - src_offset if channels is None else _int(fn, "channels", channels, minimum=0)
    if src.ndim not in (2, 4) or src_offset + channels > src.shape[1]:
        raise ValueError(f"{fn}: src_offset {src_offset} + {channels} channels exceeds the channels of src "
                         f"{src.shape}")
    piece = src[:, src_offset:src_offset + channels]
    offset = _tower_slice(fn, "src", piece, "dst", dst, offset)
    dst[:, offset:offset + channels] = piece
    return dst


@_bf16_storage("grad", "local")
def transfer_backward(grad, *, offset, channels, local=None):
    """grad[:, offset:offset + channels] (+ local[:, offset:offset + channels]): a tower's share of the
    gradient of a concatenated input, summed over the devices that read it."""
    fn = "transfer_backward"
    _array(fn, "grad", grad)
    channels = _int(fn, "channels", channels, minimum=0)
    shape = grad.shape[:1] + (channels,) + grad.shape[2:]
    offset = _tower_slice(fn, "out", np.empty(shape, grad.dtype), "grad", grad, offset)
    out = np.array(grad[:, offset:offset + channels], copy=True)
    if local is not None:
        _array(fn, "local", local, like=("grad", grad))
        _shape(fn, "local", local, grad.shape, "the shape of grad")
        out += local[:, offset:offset + channels]
    return out
