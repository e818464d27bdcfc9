"""The command line: train end to end on a tiny generated set, resume, eval, predict, prepare, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_cuda import cli


def test_train_end_to_end(trained, raw_data):
    out, cache = trained
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "checkpoint.safetensors",
                                               "curves.png"}  # curves rewritten at every epoch end
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"] == raw_data and cfg["backend"] == "numpy" and cfg["preset"] == "small"
    assert Path(cfg["prepared"]).is_relative_to(cache)
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["step"] == 6


def test_resume_from_cli(trained, tmp_path, capsys):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(trained[0], out)
    cfg = json.loads((out / "config.json").read_text())
    import os
    os.environ["ALEXNET_CUDA_CACHE"] = str(trained[1])
    try:
        assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2", "--lr", "0.5"]) == 0
    finally:
        os.environ.pop("ALEXNET_CUDA_CACHE", None)
    text = capsys.readouterr().out
    assert "--lr is ignored" in text and "resume:" in text
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2] and recs[1]["lr"] == cfg["lr"]


def test_eval_and_predict(trained, raw_data, capsys):
    out, _ = trained
    ck = str(out / "checkpoint.safetensors")
    cfg = json.loads((out / "config.json").read_text())
    assert cli.main(["eval", "--checkpoint", ck]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "12 val images" in line and "centre crop" in line and "top-1 error" in line and "top-5 error" in line
    assert cli.main(["eval", "--checkpoint", ck, "--data", cfg["prepared"], "--ten-crop"]) == 0
    assert "ten-crop" in capsys.readouterr().out

    img = sorted((Path(raw_data) / "val" / "square").glob("*.jpg"))[0]
    assert cli.main(["predict", "--checkpoint", ck, str(img), str(img)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(img) and len(lines) == 8           # 3 classes: top-3 shown per image
    names = [l.split()[1] for l in lines[1:4]]
    assert sorted(names) == ["circle", "square", "triangle"]
    probs = [float(l.split()[-1].rstrip("%")) for l in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.1


def test_eval_precision_defaults_to_the_runs_and_can_be_chosen(trained, tmp_path, capsys):
    import shutil

    from alexnet_cuda import evaluate
    from alexnet_cuda.runfolder import model_from_checkpoint
    out, _ = trained
    ck = out / "checkpoint.safetensors"
    assert model_from_checkpoint(ck)[0].precision == json.loads((out / "config.json").read_text())["precision"]
    assert cli.main(["eval", "--checkpoint", str(ck), "--precision", "bf16"]) == 0
    assert "precision bf16" in capsys.readouterr().out.strip().splitlines()[-1]
    # a checkpoint that trained at bf16 evaluates at bf16 unless told otherwise
    copy = tmp_path / "bf16run"
    shutil.copytree(out, copy)
    from alexnet_cuda import checkpoint as ckpt
    tensors, meta = ckpt.load_file(copy / "checkpoint.safetensors")
    cfg = json.loads(meta["config"])
    cfg["precision"] = "bf16"
    ckpt.save_file(tensors, copy / "checkpoint.safetensors", {**meta, "config": json.dumps(cfg)})
    assert model_from_checkpoint(copy / "checkpoint.safetensors")[0].precision == "bf16"
    assert evaluate.evaluate(copy / "checkpoint.safetensors", precision="fp32", log=lambda *a: None)["precision"] == "fp32"


def test_user_errors_exit_2_without_traceback(tmp_path, capsys, trained):
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"),
                     "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "nope" in err
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "val" / "a").mkdir(parents=True)
    assert cli.main(["train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "o2"),
                     "--backend", "numpy"]) == 2
    assert "no images" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(trained[0] / "checkpoint.safetensors"),
                     str(tmp_path / "no.jpg")]) == 2
    assert "no.jpg" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "o3"),
                     "--schedule", "cosine", "--backend", "numpy"]) == 2


def test_cuda_backend_without_gpu_is_a_clear_error(monkeypatch, capsys, tmp_path):
    import alexnet_cuda.backends as B
    monkeypatch.setattr(B, "cuda_unusable_reason", lambda: "no usable CUDA GPU (test)")
    assert cli.main(["train", "--backend", "cuda", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cuda cannot run here" in err and "numpy" in err


def test_default_train_picks_numpy_and_small_in_one_line(monkeypatch, capsys, tmp_path, raw_data):
    """No --data and no GPU: the synthetic set, the numpy backend, the small preset, said in one line."""
    import alexnet_cuda.backends as B
    import alexnet_cuda.data as D
    from alexnet_cuda import train as T
    monkeypatch.setattr(B, "cuda_unusable_reason", lambda: "no usable CUDA GPU (test)")
    made = {}

    def fake_make(root=None, **kw):
        made.update(kw)
        return Path(raw_data)

    captured = {}

    def fake_train(cfg, log=print, **kw):
        captured.update(cfg)
        return 0

    monkeypatch.setattr(D, "make_synthetic_dataset", fake_make)
    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 1 and "cuda backend cannot run here" in lines[0] and "numpy" in lines[0] and "small" in lines[0]
    assert captured["backend"] == "numpy" and captured["preset"] == "small" and captured["data"] == raw_data
    assert captured["out"] == "runs/alexnet-small" and captured["init"] == "he"


def test_prepare_subcommand(raw_data, tmp_path, capsys):
    dst = tmp_path / "prep"
    assert cli.main(["prepare", raw_data, str(dst), "--size", "32", "--workers", "1"]) == 0
    from alexnet_cuda.data import PreparedDataset
    ds = PreparedDataset(dst, "train")
    assert ds.size == 32 and len(ds) == 48 and ds.classes == ["circle", "square", "triangle"]
    assert cli.main(["prepare", str(tmp_path / "none"), str(tmp_path / "x")]) == 2


def test_gradcheck_and_visualize_are_subcommands(capsys):
    for cmd, flag in (("gradcheck", "--backend"), ("visualize", "--num-queries")):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0 and flag in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["gradcheck", "--backend", "tpu"])
    assert e.value.code == 2


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_gradcheck_checks_the_backends_own_backward(backend, capsys, monkeypatch):
    assert cli.main(["gradcheck", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert f"all 17 gradient checks passed on the {backend} backend" in out
    from alexnet_cuda import get_backend
    be = get_backend(backend)
    right = be.relu_backward
    monkeypatch.setattr(be, "relu_backward", lambda dy, y: right(dy, y) * 1.001, raising=False)
    assert cli.main(["gradcheck", "--backend", backend]) == 1       # a 0.1% error in one backward is caught
    assert "FAILED: 1 of 17 checks" in capsys.readouterr().out


def test_python_m_help():
    r = subprocess.run([sys.executable, "-m", "alexnet_cuda", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    for cmd in ("train", "prepare", "eval", "predict", "gradcheck", "visualize"):
        assert cmd in r.stdout
    r = subprocess.run([sys.executable, "-m", "alexnet_cuda", "train", "--help"], capture_output=True, text=True,
                       timeout=60)
    for flag in ("--data", "--out", "--epochs", "--batch-size", "--lr", "--preset", "--backend", "--seed",
                 "--resume", "--workers", "--patience", "--schedule", "--sync-every"):
        assert flag in r.stdout
