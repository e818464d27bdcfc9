"""AlexNet(precision=...): the layers with tensor-core kernels (conv and linear, forward and
backward) take TF32- or BF16-rounded operands; on numpy by rounding (the reference), on the
kernel backends through the tensor-core kernels, so both give the same numbers up to FP32
summation order."""
import numpy as np
import pytest

from alexnet_cuda.backends import available_backends
from alexnet_cuda.model import AlexNet

TINY = dict(num_classes=5, input_size=67, width=1 / 16, init="he", seed=3)


def batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 67, 67)).astype(np.float32), rng.integers(0, 5, n)


def run(backend, precision):
    m = AlexNet(backend=backend, precision=precision, **TINY)
    be = m.backend
    x, labels = batch()
    loss = float(be.to_numpy(m.loss_and_grads(x, labels)))
    logits = be.to_numpy(m.forward(x))
    grads = {n: be.to_numpy(g) for n, g in m.gradients()}
    return loss, logits, grads


def test_precision_changes_the_numbers_on_numpy_by_rounding():
    loss32, logits32, _ = run("numpy", "fp32")
    for p in ("tf32", "bf16"):
        loss, logits, grads = run("numpy", p)
        assert np.all(np.isfinite(logits)) and np.isfinite(loss)
        # rounded, not the FP32 numbers, and not far from them (BF16 keeps 8 bits, TF32 11)
        assert not np.array_equal(logits, logits32)
        rel = np.abs(logits - logits32).max() / np.abs(logits32).max()
        assert rel < (0.05 if p == "bf16" else 0.01), rel
    assert run("numpy", "bf16")[0] != run("numpy", "tf32")[0]


def tolerance(p):
    return 2.0 ** -12 if p == "bf16" else 2.0 ** -14


KERNEL_BACKENDS = [b for b in ("emu", "cuda") if b in available_backends()]


@pytest.mark.parametrize("p", ["tf32", "bf16"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernel_backends_match_numpy_at_each_precision(backend, p):
    ref_loss, ref_logits, ref_grads = run("numpy", p)
    loss, logits, grads = run(backend, p)
    # Same rounded operands; the only difference is the FP32 summation order inside each layer
    # (relative ~1e-7), except where a sum lands next to a rounding boundary of the next
    # layer's operand: that operand then rounds the other way, moving one term of each sum it
    # feeds by one unit (2^-8 BF16, 2^-11 TF32 of the term), a small fraction of the sums.
    # Measured (2026-12-02, emu, conv backward on tensor cores too): <= 2.6e-5 (TF32) and
    # 5.2e-7 (BF16) of the largest |value|; allowed: 2^-12 (BF16), 2^-14 (TF32) of it.
    tol = tolerance(p)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=tol * np.abs(ref_logits).max())
    for n, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[n], rtol=0, atol=tol * np.abs(ref_grads[n]).max(), err_msg=n)


@pytest.mark.parametrize("p", ["tf32", "bf16"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_the_parity_sees_the_conv_backward_precision(backend, p, monkeypatch):
    """The conv layers' backward runs at the model's precision: with numpy's conv2d_backward
    at FP32 instead (the forward and the linear layers unchanged), every conv weight gradient
    is off by more than the parity test's tolerance (measured 2026-12-02: 3.6e-4 to 6.1e-4
    (TF32), 2.4e-3 to 6.2e-3 (BF16) of the largest |value|)."""
    from alexnet_cuda import reference

    grads = run(backend, p)[2]
    fp32_backward = reference.conv2d_backward
    def at_fp32(dy, x, w, precision="fp32", **kw):  # BF16 storage (at bf16) widened, dx stored back in x's
        import ml_dtypes

        from alexnet_cuda.precision import to_bf16
        wide = lambda a: a.astype(np.float32) if a.dtype == ml_dtypes.bfloat16 else a  # noqa: E731
        dx, dw, db = fp32_backward(wide(dy), wide(x), w, **kw)
        return (to_bf16(dx) if dx is not None and x.dtype == ml_dtypes.bfloat16 else dx), dw, db

    monkeypatch.setattr(reference, "conv2d_backward", at_fp32)
    wrong = run("numpy", p)[2]
    names = [n for n in grads if n.startswith("conv") and n.endswith("weight")]
    assert len(names) == 5
    if p == "bf16":
        # With BF16 storage conv5's x and dy are BF16 values already, so rounding them changes nothing: its
        # filter gradient is the same either way; the rounding of w in its data gradient reaches conv1-conv4.
        names.remove("conv5.weight")
    for n in names:
        assert np.abs(grads[n] - wrong[n]).max() > tolerance(p) * np.abs(wrong[n]).max(), n


def test_bad_precision():
    with pytest.raises(ValueError, match=r"AlexNet: precision must be one of fp32, tf32, bf16, got 'fp16'"):
        AlexNet(backend="numpy", precision="fp16", **TINY)


def test_cli_trains_at_bf16_and_records_it(raw_data, tmp_path, monkeypatch):
    import json

    from alexnet_cuda import cli

    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = cli.main(["train", "--data", raw_data, "--out", str(out), "--epochs", "1", "--batch-size", "8",
                   "--backend", "numpy", "--preset", "small", "--seed", "1", "--precision", "bf16"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["precision"] == "bf16"
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rec[-1]["train_loss"])
