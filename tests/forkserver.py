"""Command lines for the tests without paying torch, transformers and peft's imports in every process.

A test that runs ``python -m tevatron.driver.train ...`` spends ~10 s of CPU importing before the command
does anything; the suite runs hundreds.  Here ``python`` (a shim put first on PATH, and what the helpers
run) asks a *fork server*, a process that imported those libraries once and then only waits, to fork a
child that runs the command: a real, separate process with the caller's arguments, working directory,
environment, stdin/stdout/stderr (passed as file descriptors), file-size limit and exit status, which
starts the command as ``python`` would (``runpy``; ``sys.path[0]`` as ``-m``, ``-c``, ``-`` or a script
sets it) and ends like it (threads joined, ``atexit`` run, output flushed).

Anything the child could not mirror runs the real interpreter instead: an option other than ``-m``, ``-c``
and ``-`` or a script, no server to reach, or an environment whose import-time variables (``PYTHON*``,
``HF_*``, ``OMP_*``, ...) differ from the server's; such an environment gets a server of its own.  A server
refuses to start if its imports left a second thread (a fork would copy it dead), and leaves once its
folder is gone (the session removed it) or after ``IDLE_SECONDS`` unused.  If the caller dies (a test's
timeout), the command's process group is killed.  ``TEVATRON_TEST_FORKSERVER=0`` turns all of it off.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

FOLDER_VARIABLE = "TEVATRON_TEST_FORKSERVER_DIR"
BIN_VARIABLE = "TEVATRON_TEST_FORKSERVER_BIN"  # the shim's folder, for PATH
# Read at import (or interpreter start) by python, torch, OpenMP, MKL, the HF libraries: a child of a
# server started with other values would not behave as a fresh process.
IMPORT_TIME_PREFIXES = ("PYTHON", "HF_", "HUGGINGFACE", "TRANSFORMERS", "DATASETS", "TOKENIZERS", "TORCH",
                        "PYTORCH", "OMP_", "MKL_", "KMP_", "GOMP", "CUDA", "LD_", "MALLOC", "FAISS", "LC_", "LANG")
PRELOADED = ("torch", "numpy", "transformers", "peft", "faiss", "safetensors.torch",
             "tevatron.driver.train", "tevatron.driver.encode", "tevatron.faiss_retriever.retriever",
             "tevatron.faiss_retriever.reducer", "tevatron.reranker.driver.train",
             "tevatron.reranker.driver.rerank", "tevatron.reranker.driver.score_groups", "tevatron.evaluation")
IDLE_SECONDS = 900
START_SECONDS = 300


# --------------------------------------------------------------------------- the caller's side
def install(folder: str) -> str:
    """Write the ``python`` shim into ``folder`` (also the servers' folder); returns its bin directory."""
    bin_dir = os.path.join(folder, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for name in ("python", "python3"):
        path = os.path.join(bin_dir, name)
        with open(path, "w", encoding="utf-8") as out:  # -S: the shim needs the standard library only
            out.write(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                      f"import forkserver\nforkserver.client_main({sys.executable!r})\n")
        os.chmod(path, 0o755)
    return bin_dir


def _import_signature(environ) -> str:
    relevant = sorted((k, v) for k, v in environ.items() if k.startswith(IMPORT_TIME_PREFIXES))
    return hashlib.sha1(json.dumps(relevant).encode()).hexdigest()[:16]


def _supported(argv: list[str]) -> bool:
    if not argv:
        return False
    if argv[0] == "-m":  # torchrun's workers are real interpreters anyway
        return len(argv) >= 2 and argv[1] != "torch.distributed.run"
    if argv[0] == "-c":
        return len(argv) >= 2
    return argv[0] == "-" or not argv[0].startswith("-")


def _connect(path: str) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
        return client
    except OSError:
        client.close()
        return None


def _server_for(folder: str, real_python: str) -> socket.socket | None:
    """A connection to the server for this environment, started (under a lock) if there is none."""
    import fcntl

    path = os.path.join(folder, _import_signature(os.environ) + ".sock")
    connection = _connect(path)
    if connection is not None:
        return connection
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect(path)
        if connection is not None:
            return connection
        if os.path.exists(path + ".failed"):
            return None  # this environment's server could not start: run the real interpreter
        with open(path + ".log", "ab") as log, open(os.devnull, "rb") as nothing:
            import subprocess
            server = subprocess.Popen([real_python, __file__, path], stdin=nothing, stdout=log, stderr=log,
                                      cwd="/", start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and server.poll() is None:
            connection = _connect(path)
            if connection is not None:
                return connection
            time.sleep(0.05)
        open(path + ".failed", "w").close()
        return None


def _receive_line(connection: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def client_main(real_python: str) -> None:
    argv = sys.argv[1:]
    folder = os.environ.get(FOLDER_VARIABLE)
    connection = _server_for(folder, real_python) if folder and os.path.isdir(folder) and _supported(argv) else None
    if connection is not None:
        import resource

        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                              "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)}).encode()
        descriptors = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
        socket.send_fds(connection, [struct.pack("!Q", len(request))], descriptors)
        connection.sendall(request)
        reply = _receive_line(connection)
        if reply.startswith("exit "):
            status = int(reply.split()[1])
            if status < 0:  # killed by a signal: die of it too
                signal.signal(-status, signal.SIG_DFL)
                os.kill(os.getpid(), -status)
            os._exit(status)
        if reply != "fallback":
            print(f"forkserver: the server running this command went away (its log: {folder}/*.log)",
                  file=sys.stderr)
            os._exit(1)
    os.execv(real_python, [real_python, *argv])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the server
def serve(path: str) -> None:
    import importlib

    signature = _import_signature(os.environ)
    started_with = dict(os.environ)
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except Exception as error:  # a library this environment lacks: its commands import it themselves
            print(f"forkserver: not preloaded: {name}: {error}", file=sys.stderr, flush=True)
    threads = [_thread_name(task) for task in os.listdir("/proc/self/task")]
    # pyarrow's jemalloc purges memory in a thread of its own; its fork handlers restart it in a child
    others = [name for name in threads[1:] if name != "jemalloc_bg_thd"]
    if others:
        raise SystemExit(f"forkserver: threads {threads} after the imports; a forked child would lack them")
    # what importing did to the environment (torch sets TORCHINDUCTOR_CACHE_DIR), done to each command's too
    import_changes = {k: os.environ.get(k) for k in set(started_with) | set(os.environ)
                      if started_with.get(k) != os.environ.get(k)}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(5.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the per-request processes reap themselves
    last_used = time.monotonic()
    while os.path.exists(path) and time.monotonic() - last_used < IDLE_SECONDS:
        try:
            connection, _ = listener.accept()
        except socket.timeout:
            continue
        last_used = time.monotonic()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _handle(connection, signature, import_changes)
            finally:
                os._exit(0)
        connection.close()


def _thread_name(task: str) -> str:
    with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as handle:
        return handle.read().strip()


def _handle(connection: socket.socket, signature: str, import_changes: dict) -> None:
    """Receive one command; fork the process that runs it; report its exit status (or kill it, should
    the caller die first)."""
    connection.settimeout(None)
    header, descriptors, _flags, _address = socket.recv_fds(connection, 8, 3)
    while len(header) < 8:
        header += connection.recv(8 - len(header))
    (length,) = struct.unpack("!Q", header)
    data = b""
    while len(data) < length:
        data += connection.recv(length - len(data))
    request = json.loads(data)
    if _import_signature(request["env"]) != signature:
        connection.sendall(b"fallback\n")
        return
    pid = os.fork()
    if pid == 0:
        connection.close()
        _run(request, descriptors, import_changes)
    try:
        os.setpgid(pid, pid)  # as the child does: whichever runs first, it leads its group before a kill
    except OSError:
        pass
    for fd in descriptors:
        os.close(fd)
    import select

    poller = select.poll()
    poller.register(connection, select.POLLIN | select.POLLHUP)
    try:  # wakes the poll when the command ends
        process = os.pidfd_open(pid)
        poller.register(process, select.POLLIN)
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): look every 20 ms
        process = None
    while True:
        ready = dict(poller.poll(None if process is not None else 20))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            return
        if connection.fileno() in ready:  # the caller is gone: so is its command, with its children
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return


def _run(request: dict, descriptors: list[int], import_changes: dict) -> None:
    """In the forked child: become the command's process, run it, and exit with its status."""
    import atexit
    import random
    import resource
    import runpy
    import threading
    import traceback
    import types

    os.setpgid(0, 0)
    for target, fd in zip((0, 1, 2), descriptors):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in import_changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    resource.setrlimit(resource.RLIMIT_FSIZE, tuple(request["fsize"]))
    random.seed()  # a fresh process draws a fresh seed; the server's would repeat in every command
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    argv = request["argv"]
    status = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            for name in (argv[1], argv[1] + ".__main__"):  # preloaded; a fresh interpreter has not imported it
                sys.modules.pop(name, None)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] in ("-c", "-"):
            source, name = (argv[1], "<string>") if argv[0] == "-c" else (sys.stdin.read(), "<stdin>")
            sys.argv = [argv[0], *argv[2:]] if argv[0] == "-c" else ["-", *argv[1:]]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(source, name, "exec"), main.__dict__)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            status = 0
        elif isinstance(stop.code, int):
            status = stop.code
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:  # as the interpreter reports an uncaught exception
        traceback.print_exc()
        status = 1
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status & 0xFF)


if __name__ == "__main__":
    # sys.path[0] is this file's folder; each command sets it as python would (its cwd, its script's folder)
    sys.path[0] = os.path.join(os.path.dirname(os.path.abspath(sys.argv[1])), "no-such-folder")
    serve(sys.argv[1])
