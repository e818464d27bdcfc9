"""The model: topology, names and shapes, init, state_dict, training, towers, cross-backend parity.

Runs on every backend in available_backends() (numpy always; emu and cuda where built/usable).
Tiny networks (width 1/16, 67x67 input: the smallest input of the topology) keep it fast.
"""
import math

import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import available_backends, get_backend
from alexnet_cuda.model import PRESETS, AlexNet, feature_sizes, from_preset, min_input_size

BACKENDS = available_backends()
TINY = dict(num_classes=5, input_size=67, width=1 / 16)


def tiny(backend="numpy", **kw):
    args = dict(TINY)
    args.update(kw)
    return AlexNet(backend=backend, **args)


def batch(n=8, size=67, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32), rng.integers(0, classes, n)


def test_full_model_names_and_shapes_match_pytorch():
    m = AlexNet(num_classes=1000, backend="numpy", seed=0)
    shapes = m.parameter_shapes()
    assert shapes == {
        "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
        "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),
        "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),
        "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
        "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
        "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
        "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
        "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
    }
    assert list(shapes) == [n for n, _ in m.named_parameters()]
    assert m.num_parameters() == 60_965_224          # the paper's "60 million"
    # the paper's init: N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7
    sd = m.state_dict()
    assert abs(sd["fc6.weight"].std() - 0.01) < 2e-4 and abs(sd["fc6.weight"].mean()) < 1e-4
    assert abs(sd["conv1.weight"].std() - 0.01) < 1e-3
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert np.all(sd[f"{name}.bias"] == 1.0), name
    for name in ("conv1", "conv3", "fc8"):
        assert np.all(sd[f"{name}.bias"] == 0.0), name
    assert all(a.dtype == np.float32 for a in sd.values())


def test_geometry_and_min_input():
    assert feature_sizes(227) == (55, 27, 13, 6)
    assert min_input_size() == 67
    assert feature_sizes(67)[3] == 1
    with pytest.raises(ValueError, match="too small.*67"):
        AlexNet(input_size=63, width=1 / 16, backend="numpy")
    m = tiny(input_size=99)                            # any size leaving a positive map works
    assert m.forward(batch(2, 99)[0]).shape == (2, 5)


def test_width_scales_every_layer_and_presets():
    m = tiny()
    assert m.channels == {"conv1": 6, "conv2": 16, "conv3": 24, "conv4": 24, "conv5": 16,
                          "fc6": 256, "fc7": 256}
    assert m.parameter_shapes()["conv2.weight"] == (16, 3, 5, 5)   # 6 maps / 2 towers
    assert m.parameter_shapes()["fc6.weight"] == (256, 16)
    s = from_preset("small", 10, backend="numpy")
    assert s.config["width"] == PRESETS["small"]["width"] and s.input_size == PRESETS["small"]["input_size"]
    assert s.config["init"] == "he" and PRESETS["full"]["init"] == "paper-bias0.1"
    assert PRESETS["full"]["lr"] == 0.005 and PRESETS["small"]["lr"] == 0.01
    with pytest.raises(ValueError, match="preset"):
        from_preset("huge", 10)


def test_paper_bias01_init_differs_from_the_papers_in_the_biases_only():
    kw = dict(num_classes=10, input_size=67, width=1 / 16, backend="numpy", seed=3)
    paper = AlexNet(init="paper", **kw).state_dict()
    b01 = AlexNet(init="paper-bias0.1", **kw).state_dict()
    for name, w in paper.items():
        layer, kind = name.split(".")
        if kind == "weight" or layer in ("conv1", "conv3", "fc8"):
            np.testing.assert_array_equal(b01[name], w, err_msg=name)      # same draws, same zeros
        else:
            assert np.all(w == 1.0) and np.all(b01[name] == np.float32(0.1)), name


def test_he_init_statistics():
    m = AlexNet(num_classes=10, input_size=67, width=0.5, init="he", backend="numpy")
    sd = m.state_dict()
    for l in m._param_layers:
        w = sd[f"{l.name}.weight"]
        want = math.sqrt(2.0 / l.fan_in)
        assert abs(w.std() / want - 1) < 0.1, (l.name, w.std(), want)
        assert np.all(sd[f"{l.name}.bias"] == 0)
    # fan-in counts the inputs of a group only
    assert m._param_layers[1].fan_in == (48 // 2) * 25
    with pytest.raises(ValueError, match="init"):
        AlexNet(init="xavier", backend="numpy")


def test_init_is_a_function_of_the_seed():
    a, b, c = tiny(seed=3).state_dict(), tiny(seed=3).state_dict(), tiny(seed=4).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_dict_round_trip(backend):
    src = tiny(backend, seed=1)
    dst = tiny(backend, seed=2)
    sd = src.state_dict()
    dst.load_state_dict(sd)
    x, _ = batch()
    be = get_backend(backend)
    np.testing.assert_array_equal(be.to_numpy(src.forward(x)), be.to_numpy(dst.forward(x)))
    # state_dict returns copies
    sd["conv1.weight"][...] = 0
    assert not np.all(src.state_dict()["conv1.weight"] == 0)


def test_load_state_dict_validates_names_and_shapes():
    m = tiny()
    sd = m.state_dict()
    bad = dict(sd)
    del bad["fc8.bias"]
    bad["fc9.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="missing fc8.bias.*unexpected fc9.weight"):
        m.load_state_dict(bad)
    bad = dict(sd)
    bad["conv2.weight"] = np.zeros((16, 6, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"conv2.weight has shape \(16, 6, 5, 5\).*\(16, 3, 5, 5\)"):
        m.load_state_dict(bad)
    with pytest.raises(TypeError):
        m.load_state_dict([1, 2])
    mom = m.momentum_state_dict()
    assert set(mom) == set(sd) and all(np.all(v == 0) for v in mom.values())
    with pytest.raises(ValueError, match="missing"):
        m.load_momentum_state_dict({})


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_accepts_numpy_and_checks_shape(backend):
    m = tiny(backend)
    x, _ = batch(3)
    y = m.forward(x)
    assert tuple(y.shape) == (3, 5)
    assert y.dtype == np.float32
    # eval mode is deterministic (dropout off)
    np.testing.assert_array_equal(get_backend(backend).to_numpy(y), get_backend(backend).to_numpy(m.forward(x)))
    with pytest.raises(ValueError, match=r"expected \(N, 3, 67, 67\)"):
        m.forward(np.zeros((2, 3, 64, 64), np.float32))
    f7 = m.features(x, "fc7")
    assert tuple(f7.shape) == (3, 256) and float(get_backend(backend).to_numpy(f7).min()) >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_reduces_loss(backend):
    m = tiny(backend, init="he", dropout=0.0)
    x, y = batch(8)
    x *= 0.5
    losses = [m.train_step(x, y, lr=0.01) for _ in range(25)]
    assert all(isinstance(l, float) and math.isfinite(l) for l in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert m.step == 25


def test_update_phase_is_the_papers_rule_without_decay_on_biases():
    m = tiny()
    x, y = batch(4)
    m.loss_and_grads(x, y)
    for l in m._param_layers:                # zero gradients: only weight decay acts
        l.grad_weight = np.zeros_like(l.weight)
        l.grad_bias = np.zeros_like(l.bias)
    before = m.state_dict()
    m.apply_update(lr=0.1)
    after = m.state_dict()
    for n in before:
        if n.endswith(".bias"):
            np.testing.assert_array_equal(after[n], before[n])
        else:
            np.testing.assert_allclose(after[n], before[n] * (1 - 5e-4 * 0.1), rtol=1e-6)
    mom = m.momentum_state_dict()
    np.testing.assert_allclose(mom["conv1.weight"], -5e-4 * 0.1 * before["conv1.weight"], rtol=1e-5, atol=1e-12)
    assert np.all(mom["conv1.bias"] == 0)


def test_update_matches_hand_computed_sgd():
    m = tiny(dropout=0.0)
    x, y = batch(4)
    w0 = m.state_dict()
    m.loss_and_grads(x, y)
    g = {n: np.array(a) for n, a in m.gradients()}
    m.apply_update(lr=0.05)
    w1 = m.state_dict()
    for n in w0:
        wd = 5e-4 if n.endswith(".weight") else 0.0
        v = -wd * 0.05 * w0[n] - 0.05 * g[n]
        np.testing.assert_allclose(w1[n], w0[n] + v, rtol=1e-5, atol=1e-7)


def test_nonfinite_loss_skips_the_update():
    m = tiny()
    x, y = batch(4)
    x[0, 0, 0, 0] = np.nan
    before = m.state_dict()
    loss = m.train_step(x, y, lr=0.01)
    assert not math.isfinite(loss)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _state(m):
    return {**m.state_dict(), **{"momentum." + k: v for k, v in m.momentum_state_dict().items()}}


def _assert_same_state(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsynced_steps_equal_synced_ones_and_skip_from_a_nonfinite_loss_on(backend, monkeypatch):
    """train_step(sync=False) returns the loss as a 0-d backend array and updates bit for bit as sync=True.
    From a non-finite loss on, its SGD kernels skip that step's update and every later unsynced one (the
    weights and momentum stay bitwise at the last good step) until a sync=True step. (The non-finite loss
    is injected: a NaN pixel does not reach the loss on the kernel backends, whose ReLU is fmaxf.)"""
    be = get_backend(backend)
    a, b = tiny(backend), tiny(backend)
    data = [batch(4, seed=s) for s in range(3)]
    for x, y in data[:2]:
        la = a.train_step(x, y, 0.01)
        lb = b.train_step(x, y, 0.01, sync=False)
        assert isinstance(la, float) and isinstance(lb, be.xp.ndarray) and lb.shape == ()
        assert float(be.to_numpy(lb)) == la
    _assert_same_state(_state(a), _state(b), "sync=False vs sync=True")
    good = _state(b)
    real = b.loss_and_grads
    for bad in (np.inf, np.nan):                       # real gradients, a non-finite loss
        monkeypatch.setattr(b, "loss_and_grads", lambda *args, **kw: (real(*args, **kw),
                                                                       be.xp.asarray(np.array(bad, np.float32)))[1])
        assert not math.isfinite(float(be.to_numpy(b.train_step(*data[2], 0.01, sync=False))))
        _assert_same_state(good, _state(b), f"after a loss of {bad}")
        monkeypatch.undo()
    assert math.isfinite(float(be.to_numpy(b.train_step(*data[0], 0.01, sync=False))))   # finite, still skipped
    _assert_same_state(good, _state(b), "a later unsynced step")
    assert b.step == 5
    b.train_step(*data[0], 0.01)                                     # synchronized: updates again
    assert not np.array_equal(_state(b)["fc8.weight"], good["fc8.weight"])


@pytest.mark.skipif("cuda" not in BACKENDS, reason="needs the cuda backend (a GPU)")
def test_steady_state_steps_take_all_their_memory_from_cupys_pool():
    """After warm-up steps, a training step gets every buffer from cupy's pool: no new device allocation
    (cudaMalloc) through it, and the pool does not grow. (Nothing in the cuda build allocates device memory
    outside cupy: the bindings' cudaMalloc is the emu build's `empty`.)"""
    import cupy

    class Count(cupy.cuda.MemoryHook):
        name = "alexnet_cuda_test_device_allocations"

        def __init__(self):
            self.device_allocations = 0

        def alloc_preprocess(self, **kw):           # a miss of the pool: memory from the device
            self.device_allocations += 1

    m = tiny("cuda")
    x, y = (cupy.asarray(a) for a in batch(8))      # on the device, as the training feed hands them out
    for _ in range(3):
        m.train_step(x, y, 0.01, sync=False)
    cupy.cuda.Device().synchronize()
    pool = cupy.get_default_memory_pool()
    total, hook = pool.total_bytes(), Count()
    with hook:
        for _ in range(3):
            m.train_step(x, y, 0.01, sync=False)
        cupy.cuda.Device().synchronize()
    assert hook.device_allocations == 0 and pool.total_bytes() == total


@pytest.mark.skipif("cuda" not in BACKENDS, reason="needs the cuda backend (a GPU)")
def test_a_sync_free_step_is_captured_into_a_cuda_graph_and_replays_bitwise():
    """A sync=False step reads nothing back and synchronizes nothing, so CUDA can capture it into a graph
    (a stream synchronization or a copy to pageable host memory inside would make the capture fail).
    Capturing runs nothing; launching the graph once runs the step, and leaves the same weights and
    momentum, bit for bit, as a model that ran the step directly."""
    import cupy
    x, y = (cupy.asarray(a) for a in batch(8))
    direct, captured = tiny("cuda"), tiny("cuda")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        for m in (direct, captured):
            m.train_step(x, y, 0.01, sync=False)              # the first step, as warm-up
        direct.train_step(x, y, 0.01, sync=False)
        stream.begin_capture()
        try:
            captured.train_step(x, y, 0.01, sync=False)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    _assert_same_state(_state(direct), _state(captured), "the replayed step")
    assert direct.take_bad_label() is None and captured.take_bad_label() is None


def test_dropout_masks_are_keyed_by_seed_and_step():
    x, y = batch(4)
    a, b = tiny(seed=0), tiny(seed=0)
    la = a.loss_and_grads(x, y)
    lb = b.loss_and_grads(x, y)
    assert float(la) == float(lb)
    b.step = 7                                 # another step: other masks, another loss
    assert float(b.loss_and_grads(x, y)) != float(la)
    b.step = 0
    assert float(b.loss_and_grads(x, y)) == float(la)


def test_towers_are_explicit():
    m = tiny()
    tl = m.tower_layout
    assert tl.towers == 2
    assert tl.meet_layers == ("conv3", "fc6")
    assert [tl.groups(n) for n in tl.tower_layers] == [1, 2, 1, 2, 2]
    assert [l.groups for l in m._param_layers[:5]] == [1, 2, 1, 2, 2]
    sd = m.state_dict()
    t0, t1 = m.tower_state_dict(0), m.tower_state_dict(1)
    assert set(t0) == {f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")}
    for n in t0:
        np.testing.assert_array_equal(np.concatenate([t0[n], t1[n]]), sd[n])
    assert t0["conv3.weight"].shape == (12, 16, 3, 3)   # a tower's conv3 kernels see all 16 maps
    assert t0["conv4.weight"].shape == (12, 12, 3, 3)   # conv4: own tower's 12 maps only
    with pytest.raises(ValueError):
        m.tower_state_dict(2)
    one = tiny(towers=1)
    assert one.parameter_shapes()["conv2.weight"] == (16, 6, 5, 5)


def test_grouped_conv2_keeps_towers_apart():
    """Changing tower 1's conv1 maps must not change tower 0's conv2 outputs (conv2 is tower-local)."""
    m = tiny(dropout=0.0)
    be = m.backend
    x, _ = batch(2)
    conv1, conv2 = m._param_layers[0], m._param_layers[1]
    h = be.conv2d_forward(x, conv1.weight, conv1.bias, stride=4)
    h2 = h.copy()
    h2[:, 3:] += 1.0                                     # tower 1's maps
    y = be.conv2d_forward(h, conv2.weight, conv2.bias, padding=2, groups=2)
    y2 = be.conv2d_forward(h2, conv2.weight, conv2.bias, padding=2, groups=2)
    np.testing.assert_array_equal(y[:, :8], y2[:, :8])
    assert not np.array_equal(y[:, 8:], y2[:, 8:])


def test_lazy_top_level_export():
    assert alexnet_cuda.AlexNet is AlexNet


# Cross-backend parity: the same model, weights and batches give the same losses for 10 steps.
# Tolerance (float32): |loss_backend - loss_numpy| <= 2e-5 + 2e-4 * |loss_numpy| at every step, and the
# weights after the 10 updates within 1e-5 + 1e-3 relative. The kernels sum in other orders than NumPy;
# measured on emu (2026-11-26): max |dloss| 3.6e-7 (2.3e-7 relative), max |dw| 6.7e-8, so the bound
# leaves ~500x headroom for cuda's orders, while a wrong op is off by 1e-2 or more.
PARITY_RTOL, PARITY_ATOL = 2e-4, 2e-5


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"] or
                         [pytest.param("emu", marks=pytest.mark.skip(reason="no emu/cuda backend built"))])
@pytest.mark.parametrize("variant", [{}, dict(activation="tanh", pool="non-overlapping", lrn=False, towers=1)],
                         ids=["paper", "tanh-nonoverlapping-nolrn-1tower"])
def test_cross_backend_parity_10_steps(backend, variant):
    def run(name):
        m = tiny(name, init="he", seed=5, **variant)
        rng = np.random.default_rng(11)
        out = []
        for _ in range(10):
            x = (rng.standard_normal((8, 3, 67, 67)) * 0.5).astype(np.float32)
            y = rng.integers(0, 5, 8)
            out.append(m.train_step(x, y, lr=0.01))
        return np.array(out), m.state_dict()

    ref, ref_w = run("numpy")
    got, got_w = run(backend)
    np.testing.assert_allclose(got, ref, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    for k in ref_w:   # and the weights after the 10 updates
        np.testing.assert_allclose(got_w[k], ref_w[k], rtol=1e-3, atol=1e-5, err_msg=k)
