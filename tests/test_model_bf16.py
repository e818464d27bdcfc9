"""AlexNet(precision="bf16") stores activations and their gradients in BF16 between layers.

The kernels of each op are tested against the reference elsewhere (test_bf16_storage.py,
test_bf16_products.py, test_lrn_pool.py); here: which arrays the model stores in BF16, that the
logits, weights, gradients and momentum stay FP32, and that numpy (the reference's rounding) and emu
(the kernels) train the same network.
"""
import numpy as np
import pytest

from alexnet_cuda import AlexNet, available_backends, get_backend

BACKENDS = [b for b in available_backends() if b in ("numpy", "emu")]


def _model(backend, precision="bf16", **kw):
    return AlexNet(num_classes=5, input_size=67, width=1 / 16, dropout=0.5, backend=backend, seed=3,
                   precision=precision, **kw)


def _batch(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 67, 67)).astype(np.float32), rng.integers(0, 5, n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activations_between_layers_are_bf16_and_logits_fp32(backend):
    model = _model(backend)
    be = model.backend
    x, _ = _batch()
    h, ctx = be.asarray(x), model.context()
    stored = {}
    for l in model.layers:
        h = l.forward(be, h, True, ctx)
        stored[l.name] = be.is_bf16(h)
    assert stored.pop("fc8") is False                          # the logits: FP32 for the softmax
    assert all(stored.values()), [n for n, v in stored.items() if not v]
    assert be.to_numpy(h).dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_gradients_flow_and_parameters_stay_fp32(backend):
    model = _model(backend)
    x, y = _batch()
    loss = model.train_step(x, y, 0.01)
    assert np.isfinite(loss)
    for _, g in model.gradients():
        assert g.dtype == np.float32
    for _, p in model.named_parameters():
        assert p.dtype == np.float32
    assert all(v.dtype == np.float32 for v in model.momentum.values())
    f = model.features(x, "fc7")
    assert f.dtype == np.float32 and f.shape == (3, model.channels["fc7"])


def test_fp32_and_tf32_models_store_fp32():
    for precision in ("fp32", "tf32"):
        model = _model("numpy", precision)
        be, h = model.backend, model.backend.asarray(_batch()[0])
        for l in model.layers:
            h = l.forward(be, h, True, model.context())
            assert h.dtype == np.float32


@pytest.mark.skipif("emu" not in BACKENDS, reason="needs the emu extension")
def test_numpy_and_emu_train_the_same_bf16_network():
    """Two steps from the same weights. The kernels and the reference sum in different orders, so an
    activation's FP32 value can differ in its last bits and round to the adjacent BF16 value (2^-8
    relative); such flips propagate, so the two runs agree to about BF16's precision, not bit for
    bit: loss within 2%, and each parameter's update (w after - w before) pointing the same way
    (cosine > 0.98) with a norm within 5%. An FP32-storage run of the same model is further from
    the BF16 run than that on the loss's last digits only, so the check is the storage's, not a proof
    of equality."""
    runs = {}
    for backend in ("numpy", "emu"):
        model = _model(backend)
        w0 = model.state_dict()
        losses = [model.train_step(*_batch(seed=s), 0.05) for s in range(2)]
        runs[backend] = (losses, {k: v - w0[k] for k, v in model.state_dict().items()})
    (la, da), (lb, db) = runs["numpy"], runs["emu"]
    np.testing.assert_allclose(la, lb, rtol=2e-2)
    for k in da:
        a, b = da[k].ravel().astype(np.float64), db[k].ravel().astype(np.float64)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        assert na > 0 and abs(na - nb) <= 0.05 * na, k
        assert a @ b / (na * nb) > 0.98, k


def test_towers_on_one_device_store_bf16_too():
    be = get_backend("numpy")
    model = _model(be, towers=1)
    h = be.asarray(_batch()[0])
    for l in model.layers[:3]:
        h = l.forward(be, h, True, model.context())
    assert be.is_bf16(h)
