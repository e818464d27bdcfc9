"""Finite-difference gradient checks of every backward in ``reference``.

For each op, in float64 on small random inputs, a scalar loss

    L(inputs) = sum(forward(inputs) * g)        (g a fixed random array)

is differentiated two ways: analytically, by calling the reference backward
with dy = g; and numerically, by central differences, one input element at a
time:

    dL/du_i ~= (L(u + h e_i) - L(u - h e_i)) / (2 h),     h = 1e-6.

The error measure of one gradient array is

    max_rel_err = max_i |analytic_i - numeric_i| / max(max|analytic|, max|numeric|, 1e-30)

(scaled by the largest gradient entry of the array rather than per element,
so entries that are nearly zero do not turn rounding noise into a large
relative error). A check passes when max_rel_err <= 1e-6.

Why these numbers: in float64 a central difference has a truncation error of
O(h^2 * |L'''|) ~ 1e-12 and a rounding error of O(eps * |L| / h) ~
1e-16 * 10 / 1e-6 = 1e-9 for these sizes, so a correct backward lands around
1e-9 to 1e-11, three orders of magnitude below the threshold, while a wrong
term (a missing cross-channel term, a transposed kernel, an off-by-one window)
gives errors of 1e-3 or more.

Non-smooth points are avoided: ReLU inputs are kept at least 0.1 away from 0,
and max-pooling inputs are a random permutation of distinct values spaced
0.01 apart, so every window maximum is unique by a margin far above h. LRN
uses alpha = 0.1 (instead of the paper's 1e-4) so that the cross-channel term
of its gradient is large, and C = 7 channels so that clipped windows occur.
Dropout uses the mask of a fixed seed, which is then a constant.

``alexnet-cuda gradcheck --backend emu`` (or cuda) checks our kernels' own
backward passes the same way: the analytic gradient is the kernel's, computed in
float32 on the float32-rounded inputs, and the numeric one still comes from the
float64 reference forward. The threshold is then 1e-5: float32's unit roundoff
(6e-8) times the longest sums in these cases (up to 75 terms) bounds the rounding
error near 5e-6, the measured errors on emu are at most 1.6e-7, and a wrong term
still gives 1e-3 or more.

Run as ``alexnet-cuda gradcheck [--backend numpy|emu|cuda]`` (or ``python -m
alexnet_cuda gradcheck``); exit status 0 when every check passes.
"""

from __future__ import annotations

import sys

import numpy as np

from . import reference as ref
from .backends import get_backend

STEP = 1e-6
THRESHOLD = 1e-6
THRESHOLD_F32 = 1e-5
_TINY = 1e-30


def numeric_grad(loss, u, h=STEP):
    """Central-difference gradient of the scalar function ``loss()`` with
    respect to the array ``u``, which ``loss`` reads and which is perturbed in
    place one element at a time (and restored)."""
    flat = u.reshape(-1)               # a view: u is C-contiguous
    grad = np.empty(flat.shape, dtype=np.float64)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        lp = float(loss())
        flat[i] = orig - h
        lm = float(loss())
        flat[i] = orig
        grad[i] = (lp - lm) / (2.0 * h)
    return grad.reshape(u.shape)


def max_rel_err(analytic, numeric):
    """max |a - n| over the array, divided by max(max|a|, max|n|, 1e-30)."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), _TINY)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def _away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| in [margin, 1], random sign."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(margin, 1.0, size=shape)


def _distinct(rng, shape, spacing=0.01):
    """A random permutation of distinct values spaced ``spacing`` apart, centred on 0."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).reshape(shape)


def _on(be, op, *args, **kw):
    """Run `op` of backend `be` on copies of numpy `args` in the backend's float dtype (float64 on
    numpy, float32 on the kernel backends; integer arrays keep theirs); the results come back as
    float64 numpy arrays."""
    dt = np.float64 if be.name == "numpy" else np.float32
    args = [be.asarray(a, dtype=dt if a.dtype.kind == "f" else None) if isinstance(a, np.ndarray) else a
            for a in args]
    out = getattr(be, op)(*args, **kw)
    back = lambda o: None if o is None else np.asarray(be.to_numpy(o), np.float64)  # noqa: E731
    return tuple(back(o) for o in out) if isinstance(out, tuple) else back(out)


def _activation_cases(rng, be):
    """relu (inputs away from the kink at 0) and tanh (inputs near 0, in the bend and in the flat tails)."""
    for name, x in (("relu", _away_from_zero(rng, (2, 3, 4, 5))), ("tanh", 1.5 * rng.standard_normal((2, 3, 4, 5)))):
        forward = getattr(ref, f"{name}_forward")
        g = rng.standard_normal(x.shape)
        dx = _on(be, f"{name}_backward", g, _on(be, f"{name}_forward", x))
        yield name, dx, numeric_grad(lambda: np.sum(forward(x) * g), x)


def _lrn_pool_case(rng, be):
    """LRN + max-pool as one op, the ReLU before it folded into its backward (relu_input): the gradient
    with respect to the ReLU's input u (away from 0; the pooled LRN outputs are distinct by far more than h)."""
    kw = dict(size=5, alpha=0.1, beta=0.75, k=2.0, pool_size=3, pool_stride=2)
    u = _away_from_zero(rng, (2, 7, 7, 7))
    x = ref.relu_forward(u)
    y_pool, lrn_y, scale = _on(be, "lrn_maxpool_forward", x, **kw)
    g = rng.standard_normal(y_pool.shape)
    dx = _on(be, "lrn_maxpool_backward", g, x, lrn_y, scale, relu_input=True, **kw)
    loss = lambda: np.sum(ref.lrn_maxpool_forward(ref.relu_forward(u), **kw)[0] * g)  # noqa: E731
    yield "lrn + maxpool 3/2, relu folded", dx, numeric_grad(loss, u)


def _cases(rng, be):
    """Yield (op name, analytic gradient from backend `be`, numeric gradient of the float64 reference
    forward) for every check."""
    # conv2d: stride 2, padding 1, groups 2, a non-square kernel, bias.
    kw = dict(stride=2, padding=1, groups=2)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    g = rng.standard_normal(ref.conv2d_forward(x, w, b, **kw).shape)
    dx, dw, db = _on(be, "conv2d_backward", g, x, w, **kw)
    loss = lambda: np.sum(ref.conv2d_forward(x, w, b, **kw) * g)
    yield "conv2d dx (stride 2, pad 1, groups 2)", dx, numeric_grad(loss, x)
    yield "conv2d dw (stride 2, pad 1, groups 2)", dw, numeric_grad(loss, w)
    yield "conv2d db (stride 2, pad 1, groups 2)", db, numeric_grad(loss, b)

    # conv2d: stride 1, padding 2 (wider than half the kernel), one group.
    kw = dict(stride=1, padding=2, groups=1)
    x = rng.standard_normal((1, 3, 5, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    g = rng.standard_normal(ref.conv2d_forward(x, w, None, **kw).shape)
    dx, dw, _ = _on(be, "conv2d_backward", g, x, w, **kw)
    loss = lambda: np.sum(ref.conv2d_forward(x, w, None, **kw) * g)
    yield "conv2d dx (stride 1, pad 2)", dx, numeric_grad(loss, x)
    yield "conv2d dw (stride 1, pad 2)", dw, numeric_grad(loss, w)

    # linear
    x = rng.standard_normal((3, 5))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(4)
    g = rng.standard_normal((3, 4))
    dx, dw, db = _on(be, "linear_backward", g, x, w)
    loss = lambda: np.sum(ref.linear_forward(x, w, b) * g)
    yield "linear dx", dx, numeric_grad(loss, x)
    yield "linear dw", dw, numeric_grad(loss, w)
    yield "linear db", db, numeric_grad(loss, b)

    yield from _activation_cases(rng, be)

    # lrn, both conventions, C=7 so that windows are clipped at both ends
    for name, kw in (("lrn (paper alpha, size 5)", dict(size=5, alpha=0.1, beta=0.75, k=2.0)),
                     ("lrn (alpha/size, size 3)", dict(size=3, alpha=0.3, beta=0.75, k=1.0,
                                                       alpha_scaled=True))):
        x = rng.standard_normal((2, 7, 3, 3))
        y, scale = _on(be, "lrn_forward", x, **kw)
        g = rng.standard_normal(y.shape)
        dx = _on(be, "lrn_backward", g, x, y, scale, **kw)
        yield name, dx, numeric_grad(lambda: np.sum(ref.lrn_forward(x, **kw)[0] * g), x)

    # maxpool, unique window maxima
    for name, kw, shape in (("maxpool 3/2", dict(size=3, stride=2), (2, 3, 7, 8)),
                            ("maxpool 2/1", dict(size=2, stride=1), (1, 2, 5, 4))):
        x = _distinct(rng, shape)
        y = _on(be, "maxpool_forward", x, **kw)
        g = rng.standard_normal(y.shape)
        dx = _on(be, "maxpool_backward", g, x, y, **kw)
        yield name, dx, numeric_grad(lambda: np.sum(ref.maxpool_forward(x, **kw) * g), x)

    yield from _lrn_pool_case(rng, be)

    # dropout, fixed mask (fixed seed and offset)
    kw = dict(p=0.4, seed=1234, offset=7)
    x = rng.standard_normal((4, 25))
    y, mask = _on(be, "dropout_forward", x, **kw)
    g = rng.standard_normal(y.shape)
    dx = _on(be, "dropout_backward", g, mask.astype(np.uint8), p=kw["p"])
    yield "dropout (p=0.4)", dx, numeric_grad(lambda: np.sum(ref.dropout_forward(x, **kw)[0] * g), x)

    # softmax cross-entropy; the output is a scalar, so g is a scalar
    logits = 3.0 * rng.standard_normal((5, 6))
    labels = rng.integers(0, 6, size=5).astype(np.int64)
    g = float(rng.standard_normal())
    _, dlogits = _on(be, "softmax_cross_entropy", logits, labels)
    loss = lambda: ref.softmax_cross_entropy(logits, labels)[0] * g
    yield "softmax_cross_entropy", dlogits * g, numeric_grad(loss, logits)


def threshold(be):
    """The largest max_rel_err that passes on backend `be`: THRESHOLD in float64 (numpy), THRESHOLD_F32
    for the float32 kernels."""
    return THRESHOLD if be.name == "numpy" else THRESHOLD_F32


def run_gradchecks(seed=0, verbose=False, backend="numpy"):
    """Run every check with the analytic gradients of `backend`; return a list of dicts
    {op, max_rel_err, threshold, passed}."""
    be = get_backend(backend)
    rng = np.random.default_rng(seed)
    limit = threshold(be)
    results = []
    for op, analytic, numeric in _cases(rng, be):
        err = max_rel_err(analytic, numeric)
        res = {"op": op, "max_rel_err": err, "threshold": limit, "passed": bool(err <= limit)}
        results.append(res)
        if verbose:
            print(f"{op}: max_rel_err={err:.3e} {'ok' if res['passed'] else 'FAIL'}", file=sys.stderr)
    return results


def format_table(results):
    """The results as a plain-text table."""
    width = max(len("op"), *(len(r["op"]) for r in results))
    lines = [f"{'op':<{width}}  {'max rel err':>11}  {'threshold':>9}  pass",
             f"{'-' * width}  {'-' * 11}  {'-' * 9}  ----"]
    for r in results:
        lines.append(f"{r['op']:<{width}}  {r['max_rel_err']:>11.3e}  {r['threshold']:>9.0e}  "
                     f"{'yes' if r['passed'] else 'NO'}")
    return "\n".join(lines)


DESCRIPTION = ("Check every backward of a backend against central finite differences of the float64 NumPy "
               f"reference's forward (h={STEP:g}). The numpy backend's float64 backward must agree within "
               f"{THRESHOLD:g}, the float32 kernels (emu, cuda) within {THRESHOLD_F32:g}.")


def add_arguments(p):
    """The options of `alexnet-cuda gradcheck`."""
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--verbose", action="store_true", help="report each check as it runs")
    p.add_argument("--backend", choices=("numpy", "emu", "cuda"), default="numpy",
                   help="whose backward to check: numpy (the reference, float64; default), emu or cuda (our "
                        "kernels, float32)")


def run(args, log=print):
    """Print the table; return 0 if every check passes, else 1."""
    results = run_gradchecks(seed=args.seed, verbose=args.verbose, backend=args.backend)
    log(format_table(results))
    failed = [r["op"] for r in results if not r["passed"]]
    if failed:
        log(f"FAILED: {len(failed)} of {len(results)} checks on {args.backend}: {', '.join(failed)}")
        return 1
    log(f"all {len(results)} gradient checks passed on the {args.backend} backend")
    return 0

