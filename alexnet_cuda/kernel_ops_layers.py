"""Kernel-backed LRN, max-pooling, dropout, softmax cross-entropy, SGD and top-k ops.

The signatures are the reference's (alexnet_cuda.reference) plus ``version=`` (0 = the
dispatcher's choice; tests and benchmarks run each numbered version). Python scalars are
checked here with alexnet_cuda.checks (the reference uses the same), so a wrong scalar raises the same
TypeError/ValueError with the same message on every backend; arrays are checked by the
binding (dtype, ndim, shape, contiguity, device) before anything is launched. Outputs and
workspaces are allocated here with the backend's array module and passed in.

BF16 storage: LRN, max-pooling and dropout take all-FP32 or all-BF16 activations (x, y, dy; LRN's
scale is float32 and dropout's mask uint8 either way) and return their storage (kernel_ops `_like`).

Labels out of range: by default the binding scans the labels on the device (one tiny kernel,
one 4-byte copy back and a stream synchronization) and raises ValueError before the op's
kernels run, so softmax_cross_entropy and topk_correct synchronize the stream once per call.
Given ``bad_labels`` (an int64 pair on the device, zeroed by the caller) they synchronize
nothing: the scan records the first bad label there (row + 1, label) and the kernels give its
row a NaN loss and never count it; the caller reads the pair when it reads the loss (a training
step without a host synchronization: alexnet_cuda.model, evaluate).
"""
from __future__ import annotations

import numpy as np

from . import checks


class LayerOps:
    # ---- LRN ----------------------------------------------------------------------------
    def lrn_forward(self, x, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False, version=0):
        """(y, scale); ``alpha_scaled=True`` applies alpha/size to the sum (cuda-convnet, Caffe,
        PyTorch) instead of the paper's alpha."""
        size, a, beta, k = checks.lrn_params("lrn_forward", size, alpha, beta, k, alpha_scaled)
        (y, y_bits), scale = self._like(x), self._empty_like(x)
        self._mod.lrn_forward(self._bits(x), y_bits, scale, size=size, alpha=a, beta=beta, k=k, version=version,
                              stream=self._stream())
        return y, scale

    def lrn_backward(self, dy, x, y, scale, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False, version=0):
        size, a, beta, k = checks.lrn_params("lrn_backward", size, alpha, beta, k, alpha_scaled)
        dx, dx_bits = self._like(x)
        self._mod.lrn_backward(self._bits(dy), self._bits(x), self._bits(y), self._bits(scale), dx_bits, size=size,
                               alpha=a, beta=beta, version=version, stream=self._stream())
        return dx

    # ---- max pooling --------------------------------------------------------------------
    def _pooled(self, fn, x, size, stride):
        size = checks.integer(fn, "size", size, minimum=1)
        stride = checks.integer(fn, "stride", stride, minimum=1)
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) == 4 and size <= min(shape[2], shape[3]):
            N, C, H, W = shape
            return size, stride, (N, C, (H - size) // stride + 1, (W - size) // stride + 1)
        return size, stride, (0,)  # the binding rejects x with the reference's message

    def maxpool_forward(self, x, *, size=3, stride=2, version=0):
        size, stride, out = self._pooled("maxpool_forward", x, size, stride)
        y, y_bits = self._like(x, out)
        self._mod.maxpool_forward(self._bits(x), y_bits, size=size, stride=stride, version=version,
                                  stream=self._stream())
        return y

    def maxpool_backward(self, dy, x, y, *, size=3, stride=2, relu_input=False, version=0):
        """dx; relu_input=True also zeroes dx where x <= 0 (relu_backward(dx, x): x is a ReLU's output)."""
        size, stride, _ = self._pooled("maxpool_backward", x, size, stride)
        relu_input = checks.flag("maxpool_backward", "relu_input", relu_input)
        dx, dx_bits = self._like(x)
        self._mod.maxpool_backward(self._bits(dy), self._bits(x), self._bits(y), dx_bits, size=size, stride=stride,
                                   relu_input=relu_input, version=version, stream=self._stream())
        return dx

    # ---- LRN + max pooling in one kernel (lrn_pool.cu) ------------------------------------
    def _fused_like(self, x, shape=None):
        """As _like, and a raw uint16 x (BF16 bits, the kernels' own form) gets raw uint16 outputs."""
        if getattr(x, "dtype", None) == np.uint16 and not self.is_bf16(x):
            out = self._empty(x.shape if shape is None else shape, np.uint16)
            return out, out
        return self._like(x, shape)

    def lrn_maxpool_forward(self, x, *, size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_scaled=False, pool_size=3,
                            pool_stride=2, version=0):
        """(y_pool, lrn_y, scale): lrn_forward then maxpool_forward in one kernel, bit for bit. x float32 or BF16
        storage; y_pool and lrn_y in x's storage, scale float32."""
        size, a, beta, k, pool_size, pool_stride, _ = checks.lrn_pool_params(
            "lrn_maxpool_forward", size, alpha, beta, k, alpha_scaled, pool_size, pool_stride)
        shape = getattr(x, "shape", ())
        pooled = (0,)
        if len(shape) == 4 and pool_size <= min(shape[2], shape[3]):
            N, C, H, W = shape
            pooled = (N, C, (H - pool_size) // pool_stride + 1, (W - pool_size) // pool_stride + 1)
        (y_pool, yp_bits), (lrn_y, ly_bits) = self._fused_like(x, pooled), self._fused_like(x)
        scale = self._empty_like(x)
        self._mod.lrn_maxpool_forward(self._bits(x), yp_bits, ly_bits, scale, size=size, alpha=a, beta=beta, k=k,
                                      pool_size=pool_size, pool_stride=pool_stride, version=version,
                                      stream=self._stream())
        return y_pool, lrn_y, scale

    def lrn_maxpool_backward(self, dy_pool, x, lrn_y, scale, *, size=5, alpha=1e-4, beta=0.75, k=2.0,
                             alpha_scaled=False, pool_size=3, pool_stride=2, relu_input=False, version=0):
        """dx = lrn_backward(maxpool_backward(dy_pool, lrn_y), x, lrn_y, scale) in one kernel; relu_input=True
        also zeroes dx where x <= 0 (relu_backward(dx, x): x is a ReLU's output)."""
        size, a, beta, k, pool_size, pool_stride, relu_input = checks.lrn_pool_params(
            "lrn_maxpool_backward", size, alpha, beta, k, alpha_scaled, pool_size, pool_stride, relu_input)
        dx, dx_bits = self._fused_like(x)
        self._mod.lrn_maxpool_backward(self._bits(dy_pool), self._bits(x), self._bits(lrn_y), scale, dx_bits,
                                       size=size, alpha=a, beta=beta, pool_size=pool_size, pool_stride=pool_stride,
                                       relu_input=relu_input, version=version, stream=self._stream())
        return dx

    # ---- dropout ------------------------------------------------------------------------
    def dropout_forward(self, x, *, p=0.5, seed, offset=0, start=0, version=0):
        """(y, mask uint8): mask is bitwise reference.dropout_mask(x.shape, p=p, seed=seed, offset=offset,
        start=start)."""
        fn = "dropout_forward"
        p = checks.probability(fn, "p", p)
        seed = checks.u64(fn, "seed", seed)
        offset = checks.u64(fn, "offset", offset)
        start = checks.u64(fn, "start", start)
        (y, y_bits), mask = self._like(x), self._empty_like(x, np.uint8)
        self._mod.dropout_forward(self._bits(x), y_bits, mask, p=p, seed=seed, offset=offset, start=start,
                                  version=version, stream=self._stream())
        return y, mask

    def dropout_backward(self, dy, mask, *, p=0.5, relu_y=None, version=0):
        """dx; relu_y (the output of the ReLU before the dropout, i.e. the dropout's input x) also zeroes dx
        where relu_y <= 0 (relu_backward(dx, relu_y))."""
        p = checks.probability("dropout_backward", "p", p)
        dx, dx_bits = self._like(dy)
        self._mod.dropout_backward(self._bits(dy), self._bits(mask), dx_bits, p=p,
                                   relu_y=None if relu_y is None else self._bits(relu_y), version=version,
                                   stream=self._stream())
        return dx

    # ---- loss and metric ----------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels, *, bad_labels=None, version=0):
        """(loss as a 0-d float32 array, dlogits). Labels int32 or int64. bad_labels: see the module doc."""
        shape = getattr(logits, "shape", (0, 0))
        n = shape[0] if len(shape) == 2 else 0
        loss = self._empty((1,))
        dlogits = self._empty_like(logits)
        row_loss = self._empty((n,))
        check = self._empty((1,), np.int32)
        self._mod.softmax_cross_entropy(logits, labels, loss, dlogits, row_loss, check, bad_labels=bad_labels,
                                        version=version, stream=self._stream())
        return loss.reshape(()), dlogits

    def topk_correct(self, logits, labels, k, *, bad_labels=None, version=0):
        """0-d int64 array (on the backend's device): rows whose label is in the top k."""
        k = checks.integer("topk_correct", "k", k, minimum=1)
        out = self._empty((1,), np.int64)
        check = self._empty((1,), np.int32)
        self._mod.topk_correct(logits, labels, out, check, bad_labels=bad_labels, k=k, version=version,
                               stream=self._stream())
        return out.reshape(())

    # ---- SGD ----------------------------------------------------------------------------
    def sgd_update(self, w, dw, v, *, lr, momentum=0.9, weight_decay=5e-4, loss=None, version=0):
        """In place: v = momentum*v - weight_decay*lr*w - lr*dw; w += v. Returns None. ``loss`` (optional,
        a 0-d float32 array on the device): when it is not finite the kernel writes nothing; the host
        does not read it."""
        fn = "sgd_update"
        lr = checks.real(fn, "lr", lr)
        momentum = checks.real(fn, "momentum", momentum)
        weight_decay = checks.real(fn, "weight_decay", weight_decay)
        self._mod.sgd_update(w, dw, v, lr=lr, momentum=momentum, weight_decay=weight_decay, loss=loss,
                             version=version, stream=self._stream())

    def sgd_update_multi(self, params, grads, vels, *, lr, momentum=0.9, weight_decays=None, loss=None):
        """sgd_update over every tensor of ``params`` (weight_decays[i] for params[i], default
        5e-4 each) with ONE kernel launch. The table of pointers and sizes is a kernel parameter
        up to SGD_PARAM_TENSORS tensors (no copy; AlexNet's 16); beyond, the binding copies it into
        a device buffer allocated here. ``loss`` as sgd_update's."""
        params, grads, vels, lr, momentum, weight_decays = checks.sgd_multi_args(
            params, grads, vels, lr, momentum, weight_decays)
        table = None
        if len(params) > self._mod.SGD_PARAM_TENSORS:
            table = self._empty((len(params) * self._mod.SGD_TABLE_WORDS,), np.int64)
        self._mod.sgd_update_multi(params, grads, vels, table, lr=lr, momentum=momentum,
                                   weight_decays=weight_decays, loss=loss, stream=self._stream())
