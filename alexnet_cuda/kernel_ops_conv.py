"""Kernel-backed conv2d and linear ops (csrc/kernels/conv.cu, gemm.cu; csrc/bindings/bind_conv.cpp).

The extension checks every argument first (``*_check`` returns the output shapes and the
split-reduction plan without launching anything), then this mixin allocates the outputs
and the workspace with the backend's array module and launches. Hyper-parameters are
checked here with alexnet_cuda.checks (the reference's checkers), so a bool or float ``stride`` raises the same
TypeError as on the numpy backend.

Backward passes run three kernel families: data, filter/weight (a split reduction whose
partial sums go to a workspace and are added in a fixed order: deterministic) and bias.
``version`` selects the numbered kernels (1 = direct loops, 2 = tiled implicit GEMM,
0 = the best) for every piece of the op. The conv2d and linear ops take ``precision`` (fp32,
tf32, bf16: alexnet_cuda.precision); at tf32 and bf16 ``version`` numbers the tensor-core
kernels (``versions("linear_forward_bf16")``, ``versions("conv2d_backward_tf32")``).
The conv2d ops take ``algorithm`` ("gemm", the default, or "winograd": F(4x4, 3x3) for 3x3,
stride-1 convolutions with padding <= 2 at fp32, csrc/kernels/conv_winograd.cu); with
"winograd", ``version`` numbers its kernels (``versions("conv2d_forward_winograd")``,
``versions("conv2d_backward_winograd")``) for the forward pass and the data gradient, and the
filter and bias gradients run their version 0. Its workspace (the transformed tensors) is
allocated per call like the split reductions'.
"""
from __future__ import annotations

from .checks import activation as _activation, conv_algorithm as _algorithm, conv_hyper as _hyper, integer
from .precision import as_bf16_bits, check_precision, from_bf16_bits


def _version(fn, version):
    return integer(fn, "version", version, minimum=0)


class ConvOps:
    def _work(self, floats):
        return self._empty((int(floats),)) if floats > 0 else None

    def _operands(self, fn, precision, *arrays):
        """The GEMM operands at ``precision``: BF16 as uint16 bit patterns (an ml_dtypes
        bfloat16 array is viewed, float data is rounded), else the arrays as they are."""
        if check_precision(fn, precision) != "bf16":
            return arrays
        return tuple(self.xp.ascontiguousarray(as_bf16_bits(a)) for a in arrays)

    # ---- conv2d ---------------------------------------------------------------------------
    def conv2d_forward(self, x, w, b, *, stride=1, padding=0, groups=1, version=0, precision="fp32",
                       activation="none", algorithm="gemm"):
        """y (float32); precision tf32 or bf16 runs the tensor-core forward (x, w as in linear_forward);
        activation "relu" fuses max(0, .) into every version's epilogue; algorithm "winograd" runs
        conv_winograd.cu (3x3, stride 1, padding <= 2, fp32)."""
        fn = "conv2d_forward"
        stride, padding, groups = _hyper(fn, stride, padding, groups)
        version = _version(fn, version)
        activation = _activation(fn, activation)
        x, w = self._operands(fn, precision, x, w)
        algorithm = _algorithm(fn, algorithm, precision)
        geo = dict(stride=stride, padding=padding, groups=groups, precision=precision)
        shape = self._mod.conv2d_forward_check(x, w, b, **geo)
        extra = {}
        if algorithm == "winograd":
            plan = self._winograd_plan(x, w, geo, version, "forward")
            extra = dict(algorithm=algorithm, work=self._work(plan["workspace"]))
        y = self._empty(shape)
        self._mod.conv2d_forward(x, w, b, y, version=version, activation=activation, stream=self._stream(), **geo,
                                 **extra)
        return y

    def _winograd_plan(self, x, w, geo, version, direction):
        """{'workspace': floats} of the Winograd kernels (ValueError for a geometry they do not take)."""
        return self._mod.conv2d_winograd_check(x, w, stride=geo["stride"], padding=geo["padding"],
                                               groups=geo["groups"], version=version, direction=direction)

    def conv2d_backward(self, dy, x, w, *, stride=1, padding=0, groups=1, version=0, need_dx=True, precision="fp32",
                        algorithm="gemm"):
        """(dx, dw, db), float32; precision tf32 or bf16 runs the tensor-core data and filter
        kernels (dy, x, w as in linear_backward; at bf16 db sums dy's BF16 values). algorithm
        "winograd": dx by conv_winograd.cu's `version`, dw and db by their version 0."""
        fn = "conv2d_backward"
        stride, padding, groups = _hyper(fn, stride, padding, groups)
        version = _version(fn, version)
        dy, x, w = self._operands(fn, precision, dy, x, w)
        wino = _algorithm(fn, algorithm, precision) == "winograd"
        geo = dict(stride=stride, padding=padding, groups=groups)
        data_work = 0
        if wino:  # checked also without dx: a geometry Winograd does not take is refused either way
            winograd_work = self._winograd_plan(x, w, geo, version, "data")["workspace"]
            data_work = winograd_work if need_dx else 0
        rest = 0 if wino else version  # the version of the filter and bias kernels
        plan = self._mod.conv2d_backward_check(dy, x, w, version=rest, precision=precision, **geo)
        dx = self._empty(x.shape) if need_dx else None
        dw = self._empty(w.shape)
        db = self._empty((w.shape[0],))
        # The data and filter kernels run one after the other on one stream: one workspace.
        work = self._work(max(plan["workspace"], data_work))
        s = self._stream()
        kw = dict(precision=precision, stream=s, **geo)
        if need_dx:  # the first layer's dx (the image's gradient) is never used: skip its kernel
            wk = dict(algorithm="winograd", work=work) if wino else {}
            self._mod.conv2d_backward_data(dy, x, w, dx, version=version, **kw, **wk)
        self._mod.conv2d_backward_filter(dy, x, w, dw, work, version=rest, **kw)
        dy32 = from_bf16_bits(dy) if precision == "bf16" else dy
        bias_version = rest if precision == "fp32" else 0  # the bias sums have the fp32 versions
        self._mod.conv2d_backward_bias(dy32, db, version=bias_version, stream=s)
        return dx, dw, db

    # ---- linear ---------------------------------------------------------------------------
    def linear_forward(self, x, w, b, *, version=0, precision="fp32", activation="none"):
        """y = x w^T + b (float32). precision tf32: float32 x, w on tensor cores; bf16: x, w
        BF16 (uint16 bits, ml_dtypes bfloat16, or float32 rounded here). activation "relu":
        max(0, y) in the GEMM's last pass."""
        fn = "linear_forward"
        version = _version(fn, version)
        activation = _activation(fn, activation)
        x, w = self._operands(fn, precision, x, w)
        plan = self._mod.linear_check(x, w, b, None, version=version, precision=precision)["forward"]
        y = self._empty((x.shape[0], w.shape[0]))
        self._mod.linear_forward(x, w, b, y, self._work(plan["workspace"]), version=version, precision=precision,
                                 activation=activation, stream=self._stream())
        return y

    def linear_backward(self, dy, x, w, *, version=0, precision="fp32"):
        """(dx, dw, db), float32; at bf16 dy, x, w are BF16 (as in linear_forward) and db sums dy's BF16 values."""
        fn = "linear_backward"
        version = _version(fn, version)
        dy, x, w = self._operands(fn, precision, dy, x, w)
        plans = self._mod.linear_check(x, w, None, dy, version=version, precision=precision)
        dx = self._empty(x.shape)
        dw = self._empty(w.shape)
        db = self._empty((w.shape[0],))
        # The data and weight GEMMs run one after the other on one stream: one workspace.
        work = self._work(max(plans["data"]["workspace"], plans["weight"]["workspace"]))
        s = self._stream()
        kw = dict(version=version, precision=precision, stream=s)
        self._mod.linear_backward_data(dy, x, w, dx, work, **kw)
        self._mod.linear_backward_weight(dy, x, w, dw, work, **kw)
        dy32 = from_bf16_bits(dy) if precision == "bf16" else dy
        bias_version = version if precision == "fp32" else 0  # the column sums have the fp32 versions
        self._mod.linear_backward_bias(dy32, db, version=bias_version, stream=s)
        return dx, dw, db
