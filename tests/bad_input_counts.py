"""Run the bad-input corpus (tests/test_bad_input.py) and print how it ended, as JSON: the number of cases, how many
ended in a clean one-line error, how many in a traceback, how many left their run folder changed, and the generated
(hypothesis) inputs refused or accepted. Extra arguments go to pytest (e.g. -k rankings).

    flock /tmp/cpu.lock .venv/bin/python tests/bad_input_counts.py

pytest's own report goes to stderr; the exit code is pytest's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(pytest_args: list[str]) -> int:
    tests = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        counts = Path(tmp) / "counts.json"
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(tests / "test_bad_input.py"), *pytest_args],
                              cwd=tests.parent, stdout=sys.stderr, env={**os.environ, "CHATFORGE_BAD_INPUT_COUNTS": str(counts)})
        if not counts.exists():
            print(json.dumps({"error": "the corpus did not run (see pytest's report above)", "pytest_exit": proc.returncode}))
            return proc.returncode or 1
        print(json.dumps({**json.loads(counts.read_text()), "pytest_exit": proc.returncode}, indent=2))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
