"""Test variants of the local model: SmolLM2 with ``<think>`` / ``</think>`` tokens.

**A plumbing stand-in, not a reasoning model.** SmolLM2's tokenizer has no think tokens, so a
vLLM ``--reasoning-parser deepseek_r1`` refuses it. :func:`ensure_think_variant` writes, once,
a copy of the converted SmolLM2 whose tokenizer has ``<think>`` and ``</think>`` as single-id
added tokens, with the (tied) embedding matrix grown by two rows. Served with the
DeepSeek-R1-Distill chat template (``tests/chat_templates/deepseek_r1_distill.jinja``) and
``--reasoning-parser deepseek_r1`` it exercises what a server of R1 distills does: chat
completions move the thinking into ``message.reasoning`` and leave ``content`` null until
``</think>``; ``/v1/completions`` ignores the parser.

Choices, and why:

- The tokens are **not special** (``AddedToken(special=False)``): vLLM decodes with
  ``skip_special_tokens=True`` by default, which would drop a special ``</think>`` from the
  completion text, and the client finds the end of the thinking in that text. The reasoning
  parser looks the markers up in the vocabulary, where added tokens are either way.
- ``</think>``'s row is a copy of the end-of-turn token's (``<|im_end|>``, SmolLM2's EOS):
  where SmolLM2 would end its reply the stand-in closes its thinking instead about half the
  time, and goes on to write an answer, as a reasoning model does (a mean-initialised row is
  almost never sampled, and no test could see a close). ``<think>``'s row is the mean of the
  vocabulary's rows (it only ever appears in prompts). No padding rows: nothing unknown can
  be sampled.
- Deterministic (no random initialisation), converted in a child process (torch stays out of
  this one) into a temp folder next to the target and renamed into place, as
  :func:`~dynasor_graph.local.ensure_model` does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .._errors import LocalServerError
from ._model import (
    _INSTALL_LOCAL,
    _MARKER,
    MODEL_DIR_NAME,
    _require,
    cache_dir,
    ensure_model,
    run_offline,
)

THINK_VARIANT_DIR_NAME = f"{MODEL_DIR_NAME}-think"
THINK_TOKENS = ("<think>", "</think>")
SPECIAL_VARIANT_DIR_NAME = f"{MODEL_DIR_NAME}-special"
SPECIAL_TOKENS = ("[THINK]", "[/THINK]", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                  "<|return|>", "<|constrain|>", "<|call|>")
"""Mistral's and harmony's (gpt-oss) thinking markers, as special tokens in their published
tokenizers: what the special variant adds."""
SPECIAL_CLOSERS = ("[/THINK]", "<|end|>")
"""The special variant's tokens whose rows copy the end-of-turn token's (see the module doc)."""

_STALE_TMP_S = 3600.0
_BUILD_TIMEOUT_S = 900.0


def _build_think_variant(src: Path, out: Path, special: bool = False) -> dict[str, int]:
    """Write ``out`` = ``src`` + the two think tokens (or, ``special``, the
    :data:`SPECIAL_TOKENS` as special tokens); return their ids (runs in a child)."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    old_size = len(tokenizer)
    added = SPECIAL_TOKENS if special else THINK_TOKENS
    closers = SPECIAL_CLOSERS if special else ("</think>",)
    if special:  # listed as special: vLLM drops them from returned text by default
        tokenizer.add_special_tokens({"additional_special_tokens": [
            AddedToken(t, special=True, normalized=False) for t in added]})
    else:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    lookup: Any = tokenizer.convert_tokens_to_ids
    ids = {t: int(lookup(t)) for t in added}
    if sorted(ids.values()) != list(range(old_size, old_size + len(added))):
        raise RuntimeError(f"the added tokens did not get new ids: {ids}")
    close_like = tokenizer.eos_token_id  # the row </think> copies: the end of a turn
    if not isinstance(close_like, int):
        raise RuntimeError("the tokenizer has no end-of-turn token")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables: list[Any] = [model.get_input_embeddings().weight]
    output: Any = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if output is not None and output.weight is not tables[0]:  # untied: the same rows
        tables.append(output.weight)
    with torch.no_grad():
        for rows in tables:
            mean = rows[:old_size].mean(dim=0)
            for token, index in ids.items():
                rows[index] = rows[close_like] if token in closers else mean
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    template = src / "chat_template.jinja"
    if template.is_file() and not (out / "chat_template.jinja").is_file():
        shutil.copy2(template, out / "chat_template.jinja")
    (out / "think_tokens.json").write_text(json.dumps(ids) + "\n", encoding="utf-8")
    return ids


def _build_main() -> None:
    """Child-process entry point: ``_build_think_variant(argv[1], argv[2], special?)``."""
    _build_think_variant(Path(sys.argv[1]), Path(sys.argv[2]),
                         len(sys.argv) > 3 and sys.argv[3] == "special")


def think_token_ids(folder: Path) -> dict[str, int]:
    """``{"<think>": id, "</think>": id}`` of a variant written by :func:`ensure_think_variant`."""
    ids: dict[str, int] = json.loads((folder / "think_tokens.json").read_text(encoding="utf-8"))
    return ids


def ensure_think_variant() -> Path:
    """The think-token variant of SmolLM2 under :func:`cache_dir`, next to the converted model
    (converted first if needed), built once. A plumbing stand-in for tests of vLLM's reasoning
    parser, not a reasoning model: see the module doc."""
    return _ensure_variant(THINK_VARIANT_DIR_NAME, special=False)


def ensure_special_variant() -> Path:
    """The special-token variant of SmolLM2: Mistral's ``[THINK]`` / ``[/THINK]`` and harmony's
    ``<|start|>``, ``<|channel|>``, ``<|message|>``, ``<|end|>`` … added as *special* tokens
    (as in those families' tokenizers), so vLLM drops them from the text it returns unless a
    request asks ``skip_special_tokens=False``. Built once, as :func:`ensure_think_variant`."""
    return _ensure_variant(SPECIAL_VARIANT_DIR_NAME, special=True)


def _ensure_variant(name: str, *, special: bool) -> Path:
    target = cache_dir() / name
    if (target / _MARKER).is_file():
        return target
    source = ensure_model()
    for module in ("torch", "transformers", "tokenizers"):
        _require(module, _INSTALL_LOCAL)
    parent = target.parent
    now = time.time()
    for stale in parent.glob(f".{name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)  # no marker: not a finished build of ours
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    try:
        tmp.chmod(0o755)
        _run_build(source, tmp, special)
        if not any(tmp.glob("*.safetensors")) or not (tmp / "think_tokens.json").is_file():
            raise LocalServerError(f"building the think variant wrote no model into {tmp}")
        (tmp / _MARKER).write_text(f"think variant of {source.name}\n", encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError as exc:
            if not (target / _MARKER).is_file():  # else another process finished first
                raise LocalServerError(f"cannot move the think variant to {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _run_build(source: Path, out: Path, special: bool = False) -> None:
    run_offline("dynasor_graph.local._variants:_build_main",
                [str(source), str(out), "special" if special else "plain"],
                timeout_s=_BUILD_TIMEOUT_S, what=f"building the think variant of {source.name}")
