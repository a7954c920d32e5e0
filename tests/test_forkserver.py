"""tests/forkserver.py runs the suite's command lines: each must behave as under a fresh interpreter."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forkserver import BIN_VARIABLE
from helpers import command_python



@pytest.fixture(autouse=True)
def _served():
    if os.environ.get(BIN_VARIABLE) is None:  # set by conftest's session fixture
        pytest.skip("the fork server is off (TEVATRON_TEST_FORKSERVER=0)")

PROBE = """\
import json, os, sys
import tevatron
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                  "setting": os.environ.get("PROBE_SETTING"), "stdin": sys.stdin.read(),
                  "main": sys.modules["__main__"].__dict__.get("MARK")}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("PROBE_STATUS", "0")))
"""


def run(python: str, args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], cwd=cwd, env=dict(os.environ, **env), input="given on stdin",
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("form", ["-m", "script", "-c"])
def test_a_served_command_sees_what_a_fresh_interpreter_sees(tmp_path, form):
    (tmp_path / "probe_module.py").write_text("MARK = 'module'\n" + PROBE)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "probe_script.py").write_text("MARK = 'script'\n" + PROBE)
    args = {"-m": ["-m", "probe_module", "a", "b c"], "script": ["sub/probe_script.py", "a", "b c"],
            "-c": ["-c", "MARK = 'code'\n" + PROBE, "a", "b c"]}[form]
    served = run(command_python(), args, tmp_path, PROBE_SETTING="x y", PROBE_STATUS="7")
    fresh = run(sys.executable, args, tmp_path, PROBE_SETTING="x y", PROBE_STATUS="7")
    assert (served.returncode, served.stderr) == (fresh.returncode, fresh.stderr) == (7, "to stderr\n")
    assert json.loads(served.stdout) == json.loads(fresh.stdout)
    assert json.loads(served.stdout)["stdin"] == "given on stdin"


def test_an_uncaught_exception_and_a_signal_end_the_command_as_they_end_python(tmp_path):
    raised = run(command_python(), ["-c", "raise ValueError('bad')"], tmp_path)
    assert raised.returncode == 1 and raised.stderr.rstrip().endswith("ValueError: bad"), raised.stderr
    killed = run(command_python(), ["-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], tmp_path)
    assert killed.returncode == -signal.SIGTERM


def test_the_callers_file_size_limit_applies(tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    code = "import os; fd = os.open('big', os.O_WRONLY | os.O_CREAT); os.write(fd, b'x' * 1024); os.write(fd, b'x')"
    for python in (command_python(), sys.executable):
        result = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, preexec_fn=limit)
        assert result.returncode == 1 and "OSError: [Errno 27] File too large" in result.stderr, result.stderr
        assert (tmp_path / "big").stat().st_size == 1024
        (tmp_path / "big").unlink()


def test_a_killed_caller_takes_its_command_along(tmp_path):
    code = ("import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(120); "
            "open('finished', 'w').close()")
    caller = subprocess.Popen([command_python(), "-c", code], cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and caller.poll() is None
        time.sleep(0.05)
    command_pid = int((tmp_path / "pid").read_text())
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{command_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{command_pid}").exists(), "the command outlived its caller"
    assert not (tmp_path / "finished").exists()
