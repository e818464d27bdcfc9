"""Labels out of range recorded on the device instead of raised: the `bad_labels` pair of
softmax_cross_entropy and topk_correct (kernels in csrc/kernels/softmax_xent.cu, topk.cu, labels.cuh;
no read back, so a training step has no host synchronization), the model's take_bad_label, and the
errors train and evaluate raise from it.

The numpy reference is the contract; emu runs the kernels (both versions, the three fiber orders).
The softmax's exp/log differ between numpy and the kernels in the last bits, so values are compared
at 1e-6 relative (float32, rows of 7 classes); records, NaNs and counts are compared exactly."""
import numpy as np
import pytest

import alexnet_cuda
from alexnet_cuda import train as T
from alexnet_cuda.errors import DataError
from alexnet_cuda.evaluate import evaluate_model
from alexnet_cuda.model import AlexNet
from conftest import ALL_BACKENDS, TINY_NET

LABELS = np.array([0, 6, 9, 3, -2, 4, 9, 1], np.int64)  # rows 2 and 6 (9) and 4 (-2) are bad
BAD_ROWS = np.array([2, 4, 6])


def _logits(rng=None):
    rng = rng or np.random.default_rng(3)
    return rng.standard_normal((8, 7)).astype(np.float32)


def _record(be):
    return be.label_record()


@pytest.mark.parametrize("version", [1, 2])
def test_good_labels_give_the_same_results_and_an_empty_record(kernel_backend, emu_order, version):
    be = kernel_backend
    z = be.asarray(_logits())
    y = be.asarray(np.array([0, 6, 2, 3, 5, 4, 1, 1], np.int32))
    rec = _record(be)
    loss, d = be.softmax_cross_entropy(z, y, bad_labels=rec, version=version)
    loss0, d0 = be.softmax_cross_entropy(z, y, version=version)
    np.testing.assert_array_equal(be.to_numpy(loss), be.to_numpy(loss0))
    np.testing.assert_array_equal(be.to_numpy(d), be.to_numpy(d0))
    for k in (1, 3):
        assert int(be.to_numpy(be.topk_correct(z, y, k, bad_labels=rec, version=version))) == \
            int(be.to_numpy(be.topk_correct(z, y, k, version=version)))
    np.testing.assert_array_equal(be.to_numpy(rec), [0, 0])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("version", [1, 2])
def test_bad_labels_are_recorded_and_poison_only_their_rows(kernel_backend, emu_order, version, dtype):
    be, z = kernel_backend, _logits()
    rec, ref_rec = _record(be), np.zeros(2, np.int64)
    loss, d = be.softmax_cross_entropy(be.asarray(z), be.asarray(LABELS.astype(dtype)), bad_labels=rec,
                                       version=version)
    ref_loss, ref_d = alexnet_cuda.reference.softmax_cross_entropy(z, LABELS.astype(dtype), bad_labels=ref_rec)
    np.testing.assert_array_equal(be.to_numpy(rec), [3, 9])  # the first bad row (2) + 1, its label
    np.testing.assert_array_equal(ref_rec, [3, 9])
    assert np.isnan(be.to_numpy(loss)) and np.isnan(ref_loss)
    # every row, bad ones included (softmax / N, no one-hot term), as the reference
    np.testing.assert_allclose(be.to_numpy(d), ref_d, rtol=1e-6, atol=1e-9)
    good = np.setdiff1d(np.arange(8), BAD_ROWS)
    _, d_good = alexnet_cuda.reference.softmax_cross_entropy(z[good], LABELS[good])
    np.testing.assert_allclose(ref_d[good] * 8 / len(good), d_good, rtol=1e-6)  # the good rows as alone (1/N apart)
    for k in (1, 7):  # k = 7: every good row counts, no bad one does
        want = alexnet_cuda.reference.topk_correct(z, LABELS.astype(dtype), k, bad_labels=np.zeros(2, np.int64))
        got = be.topk_correct(be.asarray(z), be.asarray(LABELS.astype(dtype)), k, bad_labels=rec, version=version)
        assert int(be.to_numpy(got)) == int(want)
    assert int(want) == len(good)


@pytest.mark.parametrize("version", [1, 2])
def test_a_long_batch_records_its_first_bad_row(kernel_backend, emu_order, version):
    """1000 rows: the scan's threads each cover several rows and the minimum crosses threads; bad rows beyond
    the first blocks of the top-k kernels."""
    be, rng = kernel_backend, np.random.default_rng(8)
    z = rng.standard_normal((1000, 7)).astype(np.float32)
    y = rng.integers(0, 7, 1000)
    y[[700, 300, 263]] = [-1, 9, 7]
    rec, ref_rec = _record(be), np.zeros(2, np.int64)
    for k in (1, 3):
        got = be.topk_correct(be.asarray(z), be.asarray(y), k, bad_labels=rec, version=version)
        assert int(be.to_numpy(got)) == int(alexnet_cuda.reference.topk_correct(z, y, k, bad_labels=ref_rec))
    np.testing.assert_array_equal(be.to_numpy(rec), [264, 7])
    np.testing.assert_array_equal(ref_rec, [264, 7])
    loss, _ = be.softmax_cross_entropy(be.asarray(z), be.asarray(y), bad_labels=_record(be), version=version)
    assert np.isnan(be.to_numpy(loss))


def test_the_record_keeps_the_first_bad_label_and_holds_int64_values(any_backend):
    be = any_backend
    z = be.asarray(_logits())
    rec = _record(be)
    be.topk_correct(z, be.asarray(np.array([0, 1, 2, 3, 4, 5, 6, 2**40], np.int64)), 1, bad_labels=rec)
    np.testing.assert_array_equal(be.to_numpy(rec), [8, 2**40])
    be.softmax_cross_entropy(z, be.asarray(LABELS), bad_labels=rec)  # a later bad label: kept as it was
    np.testing.assert_array_equal(be.to_numpy(rec), [8, 2**40])


@pytest.mark.parametrize("bad, err, match", [
    (lambda be: be.zeros((3,), np.int64), ValueError, "bad_labels"),
    (lambda be: be.zeros((2,), np.int32), TypeError, "bad_labels"),
    (lambda be: be.zeros((2, 1), np.int64), ValueError, "bad_labels"),
])
def test_a_wrong_record_is_refused_before_anything_runs(any_backend, bad, err, match):
    be = any_backend
    rec = bad(be)
    with pytest.raises(err, match=match):
        be.softmax_cross_entropy(be.asarray(_logits()), be.asarray(LABELS), bad_labels=rec)
    with pytest.raises(err, match=match):
        be.topk_correct(be.asarray(_logits()), be.asarray(LABELS), 1, bad_labels=rec)
    assert not be.to_numpy(rec).any()


def test_the_record_may_not_overlap_the_labels(kernel_backend):
    be = kernel_backend
    labels = be.asarray(np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64))
    with pytest.raises(ValueError, match="bad_labels"):
        be.topk_correct(be.asarray(_logits()), labels, 1, bad_labels=labels[:2])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_step_without_sync_records_a_bad_label_and_keeps_the_weights(backend):
    be = alexnet_cuda.get_backend(backend)
    m = AlexNet(backend=be, **TINY_NET)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((8, 3, 67, 67)) * 0.5).astype(np.float32)
    y = rng.integers(0, 5, 8)
    m.train_step(x, y, lr=0.01, sync=False)
    assert m.take_bad_label() is None
    before = {**m.state_dict(), **m.momentum_state_dict()}
    y_bad = y.copy()
    y_bad[5] = 5
    loss = m.train_step(x, y_bad, lr=0.01, sync=False)  # no exception: nothing is read back
    assert np.isnan(float(be.to_numpy(loss)))
    m.train_step(x, y, lr=0.01, sync=False)  # skipped too: the weights stay at the last good step
    after = {**m.state_dict(), **m.momentum_state_dict()}
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    assert m.take_bad_label() == (5, 5)
    assert m.take_bad_label() is None  # cleared
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\), found 5"):
        m.train_step(x, y_bad, lr=0.01)  # a synced step checks at once


def test_train_stops_on_a_bad_label_with_its_step(tiny_data, tmp_path, monkeypatch):
    """Steps read back every 5: a bad label at step 8 is named at the read-back after step 10, as a DataError
    with its value, row and step; the weights stay at step 7's."""
    seen = {}
    real = AlexNet.loss_and_grads

    def bad_label_at_step_8(self, x, labels, **kw):
        seen["model"] = self
        if self.step == 7:
            seen["before"] = {**self.state_dict(), **self.momentum_state_dict()}
            labels = np.array(labels, copy=True)
            labels[2] = 17
        return real(self, x, labels, **kw)

    monkeypatch.setattr(AlexNet, "loss_and_grads", bad_label_at_step_8)
    cfg = T.default_config(data=tiny_data, out=str(tmp_path / "bad"), preset="small", backend="numpy", epochs=3,
                           batch_size=8, width=1 / 16, data_size=72, eval_batch_size=16, sync_every=5)
    with pytest.raises(DataError, match=r"label is out of range: 17 at row 2 of the batch of step 8 "
                                        r"\(epoch 2, batch 2/6\).*\[0, 3\)"):
        T.train(cfg, log=lambda *a, **k: None)
    after = {**seen["model"].state_dict(), **seen["model"].momentum_state_dict()}
    for k, v in seen["before"].items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_evaluate_names_a_bad_validation_label(backend):
    m = AlexNet(backend=alexnet_cuda.get_backend(backend), **TINY_NET)
    rng = np.random.default_rng(4)
    batches = [((rng.standard_normal((4, 3, 67, 67)) * 0.5).astype(np.float32), np.array(y)) for y in
               ([0, 1, 2, 3], [4, 1, 7, 0])]
    with pytest.raises(DataError, match="validation label is out of range: 7"):
        evaluate_model(m, batches[::1])
    top1, top5, n = evaluate_model(m, batches[:1])
    assert n == 4 and 0 <= top1 <= 1 and top5 == 0.0  # 5 classes: every label is in the top 5
