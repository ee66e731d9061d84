"""``kernelflow export-model`` (issue #7): a model version copied out of a state dir as a dir or a
.tar.gz, run as a real subprocess, and loaded with ``kf.load_model`` in a fresh runtime."""

from __future__ import annotations

import subprocess
import sys
import tarfile

import numpy as np
import pytest

import kernelflow as kf

from .conftest import build_digits


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelflow", "export-model", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def exported(inproc_state, tmp_path):
    d = build_digits(inproc_state, steps=5)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    d.g.write_variable(d.g["b2"], np.eye(10, dtype="float32")[4] * 30.0)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    return d, tmp_path / "state"


def test_export_model_to_dir_loads_in_fresh_runtime(exported, tmp_path):
    d, state = exported
    r = run_cli("--state-dir", str(state), "digits", "--to", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "version 2" in r.stdout and (tmp_path / "out" / "digits" / "2" / "MODEL_COMPLETE").is_file()
    m = kf.load_model(tmp_path / "out" / "digits")
    ref = d.g.run({"probabilities": d.probs, "class": d.cls}, feed={d.x: d.X[:7]})
    out = m.predict({"image": d.X[:7]})
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=1e-6, atol=1e-7)
    assert out["class"].tolist() == [4] * 7


def test_export_model_to_tar_gz_of_a_chosen_version(exported, tmp_path):
    d, state = exported
    to = tmp_path / "digits-v1.tar.gz"
    r = run_cli("--state-dir", str(state), "digits", "--version", "1", "--to", str(to))
    assert r.returncode == 0, r.stderr
    with tarfile.open(to) as tar:
        names = tar.getnames()
    assert sorted(names) == sorted(f"digits/1/{n}" for n in
                                   ["graph.msgpack", "signature.json", "variables.safetensors", "MODEL_COMPLETE"])
    assert names[-1] == "digits/1/MODEL_COMPLETE"  # written last, as in the model dir
    m = kf.load_model(to)
    assert m.path == to and m.path.is_file()  # the archive, not the temp dir it was unpacked into
    out = m.predict({"image": d.X[:5]})
    ref = kf.load_model(state / "models" / "digits" / "1").predict({"image": d.X[:5]})
    np.testing.assert_array_equal(out["probabilities"], ref["probabilities"])
    assert out["class"].tolist() != [4] * 5  # version 1, not 2


@pytest.mark.parametrize("args,code,message", [
    (["digits", "--to", "X"], 2, "give --state-dir or --model-base-path"),
    (["--state-dir", "S", "nope", "--to", "X"], 1, "no complete model 'nope'"),
    (["--state-dir", "S", "digits", "--version", "9", "--to", "X"], 1, "no complete version 9"),
    (["--state-dir", "S", "../x", "--to", "X"], 2, "model name"),
])
def test_export_model_bad_arguments_exit_with_message(exported, tmp_path, args, code, message):
    _, state = exported
    args = [str(state) if a == "S" else str(tmp_path / "x-out") if a == "X" else a for a in args]
    r = run_cli(*args)
    assert r.returncode == code and message in r.stderr, (r.returncode, r.stderr)


def test_export_model_existing_destination_is_refused(exported, tmp_path):
    _, state = exported
    assert run_cli("--state-dir", str(state), "digits", "--to", str(tmp_path / "o")).returncode == 0
    r = run_cli("--state-dir", str(state), "digits", "--to", str(tmp_path / "o"))
    assert r.returncode == 1 and "exists already" in r.stderr


def test_load_model_archive_with_path_traversal_is_refused(tmp_path):
    import io

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(kf.errors.FailedPreconditionError, match="not a readable model archive"):
        kf.load_model(evil)
    assert not (tmp_path / "escaped").exists()


def test_load_model_archive_without_tarfile_data_filter_names_python_needed(exported, tmp_path, monkeypatch):
    _, state = exported
    to = tmp_path / "d.tar.gz"
    assert run_cli("--state-dir", str(state), "digits", "--to", str(to)).returncode == 0
    monkeypatch.delattr(tarfile, "data_filter")  # as on Python 3.10.0-3.10.11 / 3.11.0-3.11.3
    with pytest.raises(kf.errors.FailedPreconditionError, match=r"needs Python >= 3\.10\.12"):
        kf.load_model(to)


def test_export_model_failed_copy_leaves_no_temp_dir(exported, tmp_path):
    _, state = exported
    src = tmp_path / "base" / "digits" / "1"
    import shutil

    shutil.copytree(state / "models" / "digits" / "1", src)
    (src / "dangling").symlink_to(tmp_path / "nowhere")  # copytree fails on it after copying the rest
    r = run_cli("--model-base-path", str(tmp_path / "base"), "digits", "--to", str(tmp_path / "out"))
    assert r.returncode == 1 and "cannot write" in r.stderr, (r.returncode, r.stderr)
    assert list((tmp_path / "out" / "digits").iterdir()) == []  # neither the version nor a temp dir


def test_export_model_tar_gz_does_not_collide_with_a_leftover_temp(exported, tmp_path):
    _, state = exported
    (tmp_path / ".d.tar.gz.tmp").mkdir()  # what a crashed (or a concurrent) export of the old fixed name left
    r = run_cli("--state-dir", str(state), "digits", "--to", str(tmp_path / "d.tar.gz"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".d.tar.gz")) == [".d.tar.gz.tmp"]
    assert kf.load_model(tmp_path / "d.tar.gz").path == tmp_path / "d.tar.gz"
