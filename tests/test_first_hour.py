"""What a new user hits in the first hour: each test is one of the issue's items, run through the command
line as a user would."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet_cuda import backends, cli, train
from alexnet_cuda.data import PreparedDataset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CUDA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def copy_set(raw_data, dst, splits=("train", "val")):
    for s in splits:
        shutil.copytree(Path(raw_data) / s, Path(dst) / s)
    return Path(dst)


# 1. prepared data goes stale silently

def test_adding_images_prepares_again(raw_data, tmp_path, cache, capsys):
    src = copy_set(raw_data, tmp_path / "mine")
    args = ["train", "--data", str(src), "--epochs", "1", "--batch-size", "8", "--backend", "numpy",
            "--preset", "small"]
    assert cli.main(args + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    n_first = len(PreparedDataset(first["prepared"], "train"))
    extra = sorted((src / "train" / "circle").glob("*.jpg"))[0]
    for i in range(3):
        shutil.copy(extra, src / "train" / "circle" / f"new{i}.jpg")
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert "changed since it was prepared (3 files added" in capsys.readouterr().out
    second = json.loads((tmp_path / "b" / "config.json").read_text())
    assert len(PreparedDataset(second["prepared"], "train")) == n_first + 3


def test_prepare_into_a_folder_of_another_source_needs_force(raw_data, tmp_path, capsys):
    other = copy_set(raw_data, tmp_path / "other")
    sorted((other / "val" / "circle").glob("*.jpg"))[0].unlink()
    dst = tmp_path / "prep"
    assert cli.main(["prepare", raw_data, str(dst), "--size", "32", "--workers", "1"]) == 0
    assert cli.main(["prepare", str(other), str(dst), "--size", "32", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "was prepared from" in err and "--force" in err
    assert cli.main(["prepare", str(other), str(dst), "--size", "32", "--workers", "1", "--force"]) == 0
    assert len(PreparedDataset(dst, "val")) == 11


# 2. eval needs only the validation images

def test_eval_on_a_val_only_folder(trained, raw_data, tmp_path, cache, capsys):
    val_only = copy_set(raw_data, tmp_path / "valonly", splits=("val",))
    ck = str(trained[0] / "checkpoint.safetensors")
    assert cli.main(["eval", "--checkpoint", ck, "--data", str(val_only)]) == 0
    out = capsys.readouterr().out
    assert "12 val images" in out and "top-1 error" in out
    assert not any("train" in p.name for p in (cache / "prepared").iterdir())  # no training images prepared


def test_eval_class_mismatch_is_reported_before_preparing(trained, raw_data, tmp_path, cache, capsys):
    wrong = copy_set(raw_data, tmp_path / "wrong", splits=("val",))
    (wrong / "val" / "circle").rename(wrong / "val" / "disc")
    ck = str(trained[0] / "checkpoint.safetensors")
    assert cli.main(["eval", "--checkpoint", ck, "--data", str(wrong)]) == 2
    assert "differ from the checkpoint's" in capsys.readouterr().err
    assert not (cache / "prepared").exists() or not any((cache / "prepared").iterdir())


# 3. a data set smaller than a batch

def test_a_set_smaller_than_a_batch_trains_with_a_smaller_batch(raw_data, tmp_path, cache, capsys):
    assert cli.main(["train", "--data", raw_data, "--out", str(tmp_path / "r"), "--epochs", "1", "--backend",
                     "numpy", "--preset", "small"]) == 0           # 48 images, the preset's batch is 64
    out = capsys.readouterr().out
    assert "48 training images, fewer than one batch of 64; training with batch size 48" in out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["batch_size"] == 48


# 4. prepare's size follows the preset

def test_prepare_picks_the_size_of_the_preset(raw_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backends, "cuda_unusable_reason", lambda: "no GPU (test)")
    monkeypatch.delenv("ALEXNET_CUDA_BACKEND", raising=False)
    assert cli.main(["prepare", raw_data, str(tmp_path / "p"), "--workers", "1"]) == 0
    assert PreparedDataset(tmp_path / "p", "val").size == 76       # the small preset's, what train picks here
    assert "'small' preset" in capsys.readouterr().out
    assert cli.main(["prepare", raw_data, str(tmp_path / "q"), "--workers", "1", "--preset", "full"]) == 0
    assert PreparedDataset(tmp_path / "q", "val").size == 256


# 5. one place decides the backend

def test_train_honours_the_backend_environment_variable(raw_data, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(train, "train", lambda cfg, log=print, **kw: seen.update(cfg) or 0)
    monkeypatch.setenv("ALEXNET_CUDA_BACKEND", "emu")
    assert cli.main(["train", "--data", raw_data, "--out", str(tmp_path / "r")]) == 0
    assert seen["backend"] == "emu" and seen["preset"] == "small"


@pytest.mark.parametrize("command", [["train", "--data", "."], ["predict", "--checkpoint", "c", "x.jpg"],
                                     ["eval", "--checkpoint", "c"]])
def test_a_bogus_backend_variable_is_one_clear_error(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ALEXNET_CUDA_BACKEND", "bogus")
    monkeypatch.chdir(tmp_path)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown backend 'bogus' in ALEXNET_CUDA_BACKEND") and "Traceback" not in err


# 6. --resume on a finished run

def test_resume_of_a_finished_run_says_how_to_extend_it(trained, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(trained[0], out)
    assert cli.main(["train", "--resume", "--out", str(out)]) == 0
    assert "has finished its 1 epochs; pass --epochs N with N > 1" in capsys.readouterr().out


# 7. misleading messages

def test_no_gpu_at_all_says_so(monkeypatch):
    import types
    fake = types.SimpleNamespace(device_count=lambda: (0, "cudaErrorInsufficientDriver: CUDA driver version is "
                                                          "insufficient for CUDA runtime version"))
    monkeypatch.setitem(sys.modules, "alexnet_cuda._cuda", fake)
    monkeypatch.setattr(backends, "_no_driver", lambda: True)
    assert backends.cuda_unusable_reason() == "no NVIDIA GPU or driver was found on this machine"
    monkeypatch.setattr(backends, "_no_driver", lambda: False)                     # a driver, but too old
    assert "InsufficientDriver" in backends.cuda_unusable_reason()


def test_cuda_option_advice_speaks_of_options(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(backends, "cuda_unusable_reason", lambda: "no GPU (test)")
    assert cli.main(["eval", "--checkpoint", "c", "--backend", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "get_backend(" not in err and "'numpy' backend" in err


def test_a_file_given_as_data_is_called_a_file(tmp_path, capsys):
    f = tmp_path / "afile.txt"
    f.write_text("x")
    assert cli.main(["train", "--data", str(f), "--out", str(tmp_path / "o"), "--backend", "numpy"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# 8. small holes

@pytest.mark.parametrize("argv", [["predict", "--checkpoint", "c", "--top", "0", "x.jpg"],
                                  ["eval", "--checkpoint", "c", "--batch-size", "0"],
                                  ["train", "--epochs", "0"], ["train", "--lr", "-1"]])
def test_non_positive_numbers_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "expected" in capsys.readouterr().err


def test_predict_prints_the_good_images_and_names_the_bad_one(trained, raw_data, tmp_path, capsys):
    good = sorted((Path(raw_data) / "val" / "square").glob("*.jpg"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert cli.main(["predict", "--checkpoint", str(trained[0] / "checkpoint.safetensors"), str(good), str(bad)]) == 2
    cap = capsys.readouterr()
    assert cap.out.splitlines()[0] == str(good) and "broken.jpg" in cap.err and "Traceback" not in cap.err


def test_a_closed_pipe_ends_output_quietly():
    code = "from alexnet_cuda.cli import _log\nfor i in range(20000): _log('line', i)\nprint('done', flush=True)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()                       # like `| head`
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("command", ["eval", "predict", "prepare", "train", "visualize", "gradcheck"])
def test_every_command_has_a_description(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    help_text = capsys.readouterr().out
    description = help_text.split("\n\n")[1]
    assert len(description.split()) >= 8 and not description.startswith(("positional", "options"))
