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

Storage at bf16 (docs/design.md, "Reduced precision"): x and dy may be BF16 arrays of the backend
(``is_bf16``: ml_dtypes.bfloat16 on emu, uint16 on cuda), which the kernels read as they are; a
float32 x or dy is rounded to BF16 bits first (one pass), and w, the FP32 master weights, is
rounded by the kernels as they stage it (no pass). The forward output's storage is ``out_dtype``
(None: x's), dx has x's storage, dw and db are float32. On emu a uint16 array is the older form
of BF16 operands (bit patterns), read as BF16 values but FP32 storage as far as outputs go.

The conv2d ops take ``algorithm`` ("gemm", the default, or "winograd": F(4x4, 3x3) for 3x3,
stride-1 convolutions with padding <= 2 at fp32, csrc/kernels/conv_winograd.cu); with
"winograd", ``version`` numbers its kernels (``versions("conv2d_forward_winograd")``,
``versions("conv2d_backward_winograd")``) for the forward pass and the data gradient, and the
filter and bias gradients run their version 0. Its workspace (the transformed tensors) is
allocated per call like the split reductions'.
"""
from __future__ import annotations

import numpy as np

from .checks import activation as _activation, bf16_storage, conv_algorithm as _algorithm, conv_hyper as _hyper
from .checks import flag, integer, out_storage
from .precision import as_bf16_bits, check_precision, from_bf16_bits


def _version(fn, version):
    return integer(fn, "version", version, minimum=0)


class ConvOps:
    def _work(self, floats):
        return self._empty((int(floats),)) if floats > 0 else None

    def _stored_bf16(self, fn, precision, name, a):
        """True when ``a`` is BF16 storage of this backend, which needs precision bf16 (else ValueError)."""
        if not self.is_bf16(a):
            return False
        bf16_storage(fn, name, precision)
        return True

    def _operands(self, fn, precision, *arrays):
        """The activation operands (x, dy) at ``precision``: BF16 as uint16 bit patterns (a BF16
        array viewed, float data rounded: the one conversion pass), else the arrays as they are."""
        if check_precision(fn, precision) != "bf16":
            return arrays
        return tuple(self.xp.ascontiguousarray(as_bf16_bits(a)) for a in arrays)

    def _weights(self, precision, w, version=0):
        """w at ``precision``: at bf16 float32 stays (the kernels round it as they stage it; but
        gemm_tc version 2 copies its operands as they are, so there it is rounded to bits here), a
        BF16 array is viewed as bits, anything else rounded to bits; else w as it is."""
        if precision != "bf16" or (getattr(w, "dtype", None) == np.float32 and version != 2):
            return w
        return self.xp.ascontiguousarray(as_bf16_bits(w))

    def _output(self, shape, storage):
        """A new output of ``storage`` ("fp32" or "bf16": a BF16 array of this backend)."""
        return self._empty(shape, self.bf16_dtype if storage == "bf16" else np.float32)

    @staticmethod
    def _out_arg(a):
        """An output as the binding takes it: BF16 arrays as uint16 bits (a view), float32 as it is."""
        return a if a is None or a.dtype == np.float32 else as_bf16_bits(a)

    # ---- conv2d ---------------------------------------------------------------------------
    def conv2d_forward(self, x, w, b, *, stride=1, padding=0, groups=1, version=0, precision="fp32",
                       activation="none", out_dtype=None, algorithm="gemm"):
        """y; precision tf32 or bf16 runs the tensor-core forward (x, w as in linear_forward);
        activation "relu" fuses max(0, .) into every version's epilogue. out_dtype: y's storage
        (None: x's; "fp32"/float32, or "bf16"/the backend's bf16_dtype at bf16: the FP32 epilogue
        value rounded once). algorithm "winograd" runs conv_winograd.cu (3x3, stride 1, padding <= 2,
        fp32)."""
        fn = "conv2d_forward"
        stride, padding, groups = _hyper(fn, stride, padding, groups)
        version = _version(fn, version)
        activation = _activation(fn, activation)
        check_precision(fn, precision)
        algorithm = _algorithm(fn, algorithm, precision)
        storage = out_storage(fn, out_dtype, precision=precision, x_bf16=self._stored_bf16(fn, precision, "x", x),
                              bf16_dtype=self.bf16_dtype)
        (x,) = self._operands(fn, precision, x)
        w = self._weights(precision, w)
        geo = dict(stride=stride, padding=padding, groups=groups, precision=precision)
        shape = self._mod.conv2d_forward_check(x, w, b, **geo)
        extra = {}
        if algorithm == "winograd":
            plan = self._winograd_plan(x, w, geo, version, "forward")
            extra = dict(algorithm=algorithm, work=self._work(plan["workspace"]))
        y = self._output(shape, storage)
        self._mod.conv2d_forward(x, w, b, self._out_arg(y), version=version, activation=activation,
                                 stream=self._stream(), **geo, **extra)
        return y

    def _relu_x(self, x, x_bf16):
        """The ReLU output x as the data kernels read it for relu_input: x's values as the caller
        stores them, in dx's storage (BF16 storage as uint16 bits; float32 as it is, not rounded to
        the precision, so the mask is relu_backward's; on emu the older uint16 form of BF16
        operands, whose dx is float32, widened exactly)."""
        if x_bf16:
            x = as_bf16_bits(x)
        elif getattr(x, "dtype", None) == np.uint16:
            x = from_bf16_bits(x)
        return self.xp.ascontiguousarray(x)  # (no copy when it is: the operand x itself at fp32 and tf32)

    def _winograd_plan(self, x, w, geo, version, direction):
        """{'workspace': floats} of the Winograd kernels (ValueError for a geometry they do not take)."""
        return self._mod.conv2d_winograd_check(x, w, stride=geo["stride"], padding=geo["padding"],
                                               groups=geo["groups"], version=version, direction=direction)

    def conv2d_backward(self, dy, x, w, *, stride=1, padding=0, groups=1, version=0, need_dx=True, precision="fp32",
                        algorithm="gemm", relu_input=False):
        """(dx, dw, db); precision tf32 or bf16 runs the tensor-core data and filter kernels (dy, x,
        w as in linear_backward; at bf16 db sums dy's BF16 values). dx has x's storage, dw and db
        are float32. algorithm "winograd": dx by conv_winograd.cu's `version`, dw and db by their
        version 0. relu_input=True (x is a ReLU's output): dx = relu_backward(dx, x), x as given,
        in the data kernels' store (every version, precision and algorithm)."""
        fn = "conv2d_backward"
        stride, padding, groups = _hyper(fn, stride, padding, groups)
        version = _version(fn, version)
        check_precision(fn, precision)
        wino = _algorithm(fn, algorithm, precision) == "winograd"
        relu_input = flag(fn, "relu_input", relu_input)
        self._stored_bf16(fn, precision, "dy", dy)
        x_bf16 = self._stored_bf16(fn, precision, "x", x)
        relu_x = self._relu_x(x, x_bf16) if relu_input and need_dx else None
        dy, x = self._operands(fn, precision, dy, x)
        w = self._weights(precision, w)
        geo = dict(stride=stride, padding=padding, groups=groups)
        data_work = 0
        if wino:  # checked also without dx: a geometry Winograd does not take is refused either way
            winograd_work = self._winograd_plan(x, w, geo, version, "data")["workspace"]
            data_work = winograd_work if need_dx else 0
        rest = 0 if wino else version  # the version of the filter and bias kernels
        plan = self._mod.conv2d_backward_check(dy, x, w, version=rest, precision=precision, **geo)
        dx = self._output(x.shape, "bf16" if x_bf16 else "fp32") if need_dx else None
        dw = self._empty(w.shape)
        db = self._empty((w.shape[0],))
        # The data and filter kernels run one after the other on one stream: one workspace.
        work = self._work(max(plan["workspace"], data_work))
        s = self._stream()
        kw = dict(precision=precision, stream=s, **geo)
        if need_dx:  # the first layer's dx (the image's gradient) is never used: skip its kernel
            wk = dict(algorithm="winograd", work=work) if wino else {}
            self._mod.conv2d_backward_data(dy, x, w, self._out_arg(dx), version=version, relu_x=relu_x, **kw, **wk)
        self._mod.conv2d_backward_filter(dy, x, w, dw, work, version=rest, **kw)
        bias_version = rest if precision == "fp32" else 0  # the bias sums have the fp32 versions
        self._mod.conv2d_backward_bias(dy, db, version=bias_version, stream=s)  # at bf16: the bits, widened
        return dx, dw, db

    # ---- linear ---------------------------------------------------------------------------
    def linear_forward(self, x, w, b, *, version=0, precision="fp32", activation="none", out_dtype=None):
        """y = x w^T + b. precision tf32: float32 x, w on tensor cores; bf16: x BF16 (a BF16 array,
        read as it is; float32 rounded here), w float32 (rounded by the kernel as it stages it) or
        BF16. activation "relu": max(0, y) in the GEMM's last pass. out_dtype as conv2d_forward's
        (a BF16 y is rounded once, after the split-K reduction when there is one)."""
        fn = "linear_forward"
        version = _version(fn, version)
        activation = _activation(fn, activation)
        check_precision(fn, precision)
        storage = out_storage(fn, out_dtype, precision=precision, x_bf16=self._stored_bf16(fn, precision, "x", x),
                              bf16_dtype=self.bf16_dtype)
        (x,) = self._operands(fn, precision, x)
        w = self._weights(precision, w, version)
        plan = self._mod.linear_check(x, w, b, None, version=version, precision=precision)["forward"]
        y = self._output((x.shape[0], w.shape[0]), storage)
        self._mod.linear_forward(x, w, b, self._out_arg(y), self._work(plan["workspace"]), version=version,
                                 precision=precision, activation=activation, stream=self._stream())
        return y

    def linear_backward(self, dy, x, w, *, version=0, precision="fp32"):
        """(dx, dw, db); at bf16 dy, x, w as in linear_forward and db sums dy's BF16 values. dx has
        x's storage, dw and db are float32."""
        fn = "linear_backward"
        version = _version(fn, version)
        check_precision(fn, precision)
        self._stored_bf16(fn, precision, "dy", dy)
        x_bf16 = self._stored_bf16(fn, precision, "x", x)
        dy, x = self._operands(fn, precision, dy, x)
        w = self._weights(precision, w, version)
        plans = self._mod.linear_check(x, w, None, dy, version=version, precision=precision)
        dx = self._output(x.shape, "bf16" if x_bf16 else "fp32")
        dw = self._empty(w.shape)
        db = self._empty((w.shape[0],))
        # The data and weight GEMMs run one after the other on one stream: one workspace.
        work = self._work(max(plans["data"]["workspace"], plans["weight"]["workspace"]))
        s = self._stream()
        kw = dict(version=version, precision=precision, stream=s)
        self._mod.linear_backward_data(dy, x, w, self._out_arg(dx), work, **kw)
        self._mod.linear_backward_weight(dy, x, w, dw, work, **kw)
        bias_version = version if precision == "fp32" else 0  # the column sums have the fp32 versions
        self._mod.linear_backward_bias(dy, db, version=bias_version, stream=s)  # at bf16: the bits, widened
        return dx, dw, db
