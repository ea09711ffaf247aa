"""Names of the methods ``replay`` and ``bench`` evaluate, parsed once for both.

=================  ==========================================================================
``full``           reason to the natural end or the budget (one probe at the budget)
``oracle``         (replay) stop at the first probe after which the answer equals the final one
``truncate:N``     a fixed budget of N reasoning tokens, then one probe
``mild`` … ``crazy``  the Dynasor-CoT effort presets (threshold, chunk size)
``cot:T@C``        Dynasor-CoT with threshold T (agreeing probes) and chunk C tokens; suffix
                   ``+nohesitation`` turns the hesitation filter off (every probe counts as
                   confident), ``+transitions`` probes only after chunks that complete a
                   transition marker (``probe_at='transitions'``), ``+confX`` also needs
                   every probe in the window at least X sure of its answer's tokens
                   (``min_probe_confidence``), as ``calibrate`` may choose
``entropy:X@W``    (replay) exit once 1 - H/log W of the last W probe answers reaches X
``sc``             (replay) self-consistency: majority answer of all k samples of a problem
``sc:X@D``         (replay) SC Certaindex 1 - H/log D over the first D samples ≥ X: stop there
=================  ==========================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..cot import EFFORT_PRESETS, CoTConfig

Kind = Literal["full", "oracle", "truncate", "cot", "entropy", "sc"]

REPLAY_ONLY: frozenset[Kind] = frozenset({"oracle", "entropy", "sc"})

_PATTERNS: tuple[tuple[Kind, str], ...] = (
    ("truncate", r"truncate:(?P<budget>\d+)"),
    ("cot", r"cot:(?P<threshold>\d+)@(?P<chunk>\d+)(?P<nohesitation>\+nohesitation)?"
            r"(?:\+conf(?P<confidence>0?\.\d+|1(?:\.0*)?))?(?P<transitions>\+transitions)?"),
    ("entropy", r"entropy:(?P<threshold>0?\.\d+|1(?:\.0*)?|0)@(?P<window>\d+)"),
    ("sc", r"sc:(?P<threshold>0?\.\d+|1(?:\.0*)?|0)@(?P<window>\d+)"),
)


@dataclass(frozen=True)
class Method:
    """A parsed method name; unused fields stay 0."""

    name: str
    kind: Kind
    threshold: float = 0.0  # cot: agreeing probes; entropy and sc: a Certaindex in [0, 1]
    chunk: int = 0  # cot: tokens between probes
    window: int = 0  # entropy: probes scored; sc: samples at detection (0: all samples)
    budget: int = 0  # truncate: reasoning tokens
    hesitation: bool = True  # cot: a probe with a hesitation word is not confident
    transitions: bool = False  # cot: probe only after chunks that complete a transition
    min_confidence: float | None = None  # cot: every probe in the window at least this sure
    fixed: CoTConfig | None = None  # bench: run exactly these settings (a calibrated rule)

    @property
    def baseline(self) -> str:
        """The method this one's savings are measured against."""
        return "sc" if self.kind == "sc" else "full"

    def config(self, max_tokens: int, seed: int | None = None) -> CoTConfig:
        """The CoT graph settings that run this method live (``bench``)."""
        if self.kind in REPLAY_ONLY:
            raise ValueError(f"method {self.name!r} exists only in replay")
        if self.fixed is not None:
            return CoTConfig.model_validate({**self.fixed.model_dump(), "seed": seed})
        if self.kind == "full":  # one chunk of the whole budget: no probe until it is spent
            return CoTConfig(chunk_size=max_tokens, max_tokens=max_tokens, seed=seed)
        if self.kind == "truncate":
            return CoTConfig(chunk_size=self.budget, max_tokens=self.budget, seed=seed)
        values: dict[str, object] = {"chunk_size": self.chunk, "max_tokens": max_tokens,
                                     "certainty_threshold": int(self.threshold), "seed": seed}
        if not self.hesitation:
            values["hesitation_words"] = ()
        if self.transitions:
            values["probe_at"] = "transitions"
        if self.min_confidence is not None:
            values["min_probe_confidence"] = self.min_confidence
        return CoTConfig.model_validate(values)


def parse_method(name: str) -> Method:
    """Parse a method name (table in the module docstring); unknown names raise ValueError."""
    if name == "full":
        return Method(name, "full")
    if name == "oracle":
        return Method(name, "oracle")
    if name == "sc":
        return Method(name, "sc")
    if name in EFFORT_PRESETS:
        threshold, chunk = EFFORT_PRESETS[name]
        return Method(name, "cot", threshold=threshold, chunk=chunk)
    for kind, pattern in _PATTERNS:
        match = re.fullmatch(pattern, name)
        if match:
            values = match.groupdict()
            method = Method(name, kind, threshold=float(values.get("threshold") or 0),
                            chunk=int(values.get("chunk") or 0),
                            window=int(values.get("window") or 0),
                            budget=int(values.get("budget") or 0),
                            hesitation=not values.get("nohesitation"),
                            transitions=bool(values.get("transitions")),
                            min_confidence=(float(values["confidence"])
                                            if values.get("confidence") else None))
            if (kind == "cot" and (method.threshold < 1 or method.chunk < 1)) or (
                    kind in ("entropy", "sc") and method.window < 2) or (
                    kind == "truncate" and method.budget < 1):
                break
            return method
    raise ValueError(f"unknown method {name!r}: use full, oracle, truncate:N, "
                     f"{', '.join(EFFORT_PRESETS)}, cot:T@C[+nohesitation][+confX][+transitions], "
                     "entropy:X@W, "
                     "sc or sc:X@D")


def parse_methods(names: list[str]) -> list[Method]:
    """Parse ``--methods`` (space- or comma-separated), keeping order and dropping repeats."""
    seen: dict[str, Method] = {}
    for part in (p for name in names for p in name.split(",")):
        if part.strip() and part.strip() not in seen:
            seen[part.strip()] = parse_method(part.strip())
    return list(seen.values())
