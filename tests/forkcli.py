"""`python -m chatforge.cli`, many times, for the price of one import.

Importing the CLI (torch, transformers, peft) takes seconds, and the bad-input corpus runs a hundred commands: run
as a script, this module imports `chatforge.cli` once, then forks a fresh process per command, so each command runs
alone, from the state `python -m chatforge.cli` starts in, with its own exit code, standard streams and traceback.

Protocol, one JSON object per line: the test writes {"argv", "stdin", "stdout", "stderr", "timeout"} (stdin: the
text the command reads; stdout, stderr: files to write its streams to), and reads back {"rc", "timed_out"}.
`ForkCLI` is the test side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _child(request: dict) -> int:
    """In the forked process: the command, as `python -m chatforge.cli ARGV` runs it."""
    import chatforge.cli

    with tempfile.TemporaryFile() as stdin:
        stdin.write((request.get("stdin") or "").encode("utf-8"))
        stdin.seek(0)
        os.dup2(stdin.fileno(), 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    sys.argv = ["chatforge", *request["argv"]]
    try:
        code = chatforge.cli.main(request["argv"])
    except SystemExit as e:  # argparse, and sys.exit inside a command
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code or 0


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """(exit code, or minus the signal; whether it was killed for running past `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True
        time.sleep(0.005)


def serve():
    import chatforge.cli  # noqa: F401 - the import every forked command shares

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)  # the child never returns into this loop
        rc, timed_out = _wait(pid, request.get("timeout", 120))
        print(json.dumps({"rc": rc, "timed_out": timed_out}), flush=True)


class ForkCLI:
    """The test side: `run(argv)` -> (exit code, stdout, stderr, timed out)."""

    def __init__(self, workdir: Path, env: dict | None = None):
        self.workdir = Path(workdir)
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}, "the fork server did not start"
        self.count = 0

    def run(self, argv: list[str], stdin: str = "", timeout: float = 120) -> tuple[int, str, str, bool]:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"argv": [str(a) for a in argv], "stdin": stdin, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"), reply["timed_out"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    serve()
