"""What the jobs refuse on their command line, before any work: storage paths with ``.`` or ``..`` segments, model
names that are not plain folder names, and a ``google-crc32c`` without its C extension."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks import evaluate as E
from tasks import export_model as X
from tasks import prepare_examples as P
from tasks.prep import tfrecord

ROOT = Path(__file__).resolve().parents[2]
STORE = "file:///srv/tfhub"


@pytest.mark.parametrize("argv, arg", [
    (["--raw", f"{STORE}/../raw/ds=2026-11-20", "--output", f"{STORE}/examples/ds=2026-11-20",
      "--partition", "2026-11-20"], "--raw"),
    (["--raw", f"{STORE}/raw/ds=2026-11-20", "--output", f"{STORE}/./examples/ds=2026-11-20",
      "--partition", "2026-11-20"], "--output"),
])
def test_prep_refuses_dot_segments(argv, arg, capsys):
    with pytest.raises(SystemExit) as exit_:
        P.parse_args(argv)
    assert exit_.value.code == 2
    assert f"error: {arg} '{argv[1 if arg == '--raw' else 3]}' has a" in capsys.readouterr().err


def test_evaluate_refuses_dot_segments_and_a_dot_model_name(capsys):
    base = ["--examples", f"{STORE}/examples/ds=2026-11-20", "--run-dir", f"{STORE}/runs/ds=2026-11-20",
            "--serving-root", f"{STORE}/serving"]
    assert E.parse_args(base + ["--model-name", "shapes"]).model_name == "shapes"
    for name in ("..", ".", ".hidden", "a/b"):
        with pytest.raises(SystemExit):
            E.parse_args(base + ["--model-name", name])
        assert f"error: --model-name {name!r} must be a plain folder name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        E.parse_args(["--examples", f"{STORE}/../examples/ds=2026-11-20"] + base[2:] + ["--model-name", "shapes"])
    assert "error: --examples 'file:///srv/tfhub/../examples/ds=2026-11-20' has a '..' path segment" in \
        capsys.readouterr().err


def test_export_command_line_refuses_a_dot_dot_model_name_and_dataset():
    """On the real command line: exit status 2 and the argument named, before TensorFlow is imported."""
    base = [sys.executable, "-m", "tasks.export_model", "--examples", f"{STORE}/examples/ds=2026-11-20",
            "--serving-root", f"{STORE}/serving", "--version", "20261120"]
    res = subprocess.run(base + ["--run-dir", f"{STORE}/runs/ds=2026-11-20", "--model-name", ".."],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: --model-name '..' must be a plain folder name" in res.stderr
    with pytest.raises(SystemExit):
        X.parse_args(base[3:] + ["--run-dir", f"{STORE}/../runs/ds=2026-11-20", "--model-name", "shapes"])


def without_crc32c_extension(body: str, **env: str) -> subprocess.CompletedProcess:
    """Runs ``body`` in a fresh interpreter in which ``google_crc32c``'s C extension cannot be imported, as on a
    machine where it was not built: the package then falls back to its pure-Python implementation."""
    code = "import sys\nsys.modules['google_crc32c.cext'] = None  # import of the extension fails\n" + body
    base = {k: v for k, v in os.environ.items() if k != "TFHUB_ALLOW_SLOW_CRC32C"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**base, **env})


def test_jobs_fail_at_start_without_the_crc32c_extension(tmp_path):
    res = without_crc32c_extension(textwrap.dedent(f"""
        import google_crc32c
        assert google_crc32c.implementation == "python"
        from tasks.prep import tfrecord
        try:
            tfrecord.frame(b"x")  # what a Spark executor does first
        except tfrecord.SlowCrc32cError:
            print("executor refused")
        from tasks import prepare_examples as P
        P.main(["--raw", "file://{tmp_path}/raw/ds=2026-11-20", "--output", "file://{tmp_path}/ex/ds=2026-11-20",
                "--partition", "2026-11-20"])
    """))
    assert res.returncode == 1 and "executor refused" in res.stdout, res.stdout + res.stderr[-3000:]
    assert "SlowCrc32cError: google-crc32c in" in res.stderr and "has no C extension" in res.stderr
    assert "set TFHUB_ALLOW_SLOW_CRC32C=1" in res.stderr
    assert "config:" not in res.stderr  # refused before the job read its arguments


def test_the_slow_crc32c_path_can_be_allowed():
    res = without_crc32c_extension(textwrap.dedent("""
        from tasks.prep import tfrecord
        tfrecord.require_fast_crc32c()
        print(tfrecord.frame(b"abc").hex())
    """), TFHUB_ALLOW_SLOW_CRC32C="1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [tfrecord.frame(b"abc").hex()]
    assert "pure-Python CRC32C, about 2,000x slower (allowed by TFHUB_ALLOW_SLOW_CRC32C=1)" in res.stderr


def test_finetune_refuses_dot_segments(capsys):
    from tasks import finetune as F

    base = {"--examples": f"{STORE}/examples/ds=2026-11-20", "--run-dir": f"{STORE}/runs/ds=2026-11-20",
            "--storage-root": STORE, "--hub-module": "hub/shapes_fv_32"}
    argv = [x for kv in base.items() for x in kv]
    assert F.parse_args(argv).run_dir == base["--run-dir"]
    for arg in ("--examples", "--run-dir", "--storage-root"):
        bad = dict(base, **{arg: base[arg].replace("/srv/tfhub", "/srv/tfhub/..")})
        with pytest.raises(SystemExit):
            F.parse_args([x for kv in bad.items() for x in kv])
        assert f"error: {arg} '{bad[arg]}' has a '..' path segment" in capsys.readouterr().err
