#!/usr/bin/env bash
# A virtual environment with Hugging Face TRL for bench/trl_ppo.py, kept apart from chatforge's .venv:
# TRL is a point of comparison, never a chatforge dependency.
#
#     bash bench/trl_env.sh            # creates .venv-trl/ at the repo root (idempotent), prints the versions
#
# TRL's PPOTrainer exists only up to trl 1.12.0, hence the exact pin. torch goes through the repo's
# constraints.txt like every other install here: without it, trl's loose torch requirement pulls the
# CUDA build and gigabytes of wheels. transformers / accelerate / datasets are whatever trl 1.12.0 asks for.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-trl"
PYTHON="${PYTHON:-python3}"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c "$ROOT/constraints.txt")

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip skips what is already installed at the right version, so a second run costs a few seconds.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" trl==1.12.0

"$VENV/bin/python" - <<'EOF'
import accelerate, datasets, torch, transformers, trl
for m in (trl, transformers, accelerate, datasets, torch):
    print(f"{m.__name__:<13} {m.__version__}")
EOF
