"""The calibrated-rule file that ``calibrate`` writes and ``solve``, ``bench`` and the graph
factories load: which stopping rule, for which model and data, certified to what bound.

It is plain JSON validated by :class:`CalibratedRule` (no scipy needed to read it)::

    rule = CalibratedRule.load(Path("calibrated.json"))
    graph = create_cot(endpoint, rule.cot_config())      # or CoTConfig.from_calibration(path)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._errors import DataFormatError, DynasorError
from ..cot import CoTConfig

FORMAT: Literal["dynasor-graph/calibrated-rule/1"] = "dynasor-graph/calibrated-rule/1"


class CalibrationError(DynasorError, ValueError):
    """Calibration cannot certify a rule: too few traces for the bound, or no candidate rule
    passes it (then full reasoning is the only rule with a guarantee)."""


class Rule(BaseModel):
    """A stopping rule the CoT graph runs: exit once the last ``certainty_threshold`` probes,
    one every ``chunk_size`` reasoning tokens, are non-empty, equivalent and confident."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_size: int = Field(ge=1)
    certainty_threshold: int = Field(ge=1, le=64)
    hesitation_filter: bool = Field(
        default=True, description="A probe with a hesitation word counts as not confident")
    min_probe_confidence: float | None = Field(
        default=None, gt=0, le=1, description="Every probe in the window at least this sure "
        "of its answer's tokens (CoTConfig.min_probe_confidence); None: agreement only")
    probe_at: Literal["chunks", "transitions"] = Field(
        default="chunks", description="Probe after every chunk, or only after chunks that "
        "complete a transition marker (CoTConfig.probe_at)")

    @property
    def method(self) -> str:
        """The rule's name in ``replay`` and ``bench``
        (``cot:T@C[+nohesitation][+confX][+transitions]``)."""
        name = f"cot:{self.certainty_threshold}@{self.chunk_size}"
        name += "" if self.hesitation_filter else "+nohesitation"
        name += "" if self.min_probe_confidence is None else f"+conf{self.min_probe_confidence:g}"
        return name + ("+transitions" if self.probe_at == "transitions" else "")


class DataFile(BaseModel):
    """A traces file calibration read: where it was, its SHA-256 and how many traces it held."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    traces: int = Field(ge=0)


class Outcome(BaseModel):
    """A rule on one split: paired losses (wrong where full reasoning was right), accuracy and
    the share of generated tokens (reasoning + probe completions) saved against full."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(ge=0)
    losses: int = Field(ge=0)
    loss: float = Field(ge=0, le=1)
    accuracy: float = Field(ge=0, le=1)
    savings: float
    upper_bound: float | None = Field(
        default=None, description="One-sided Clopper-Pearson upper bound on the loss at the "
        "stated confidence (calibration split only)")


class CalibratedRule(BaseModel):
    """What ``calibrate`` certifies: with probability at least ``confidence`` over the draw of
    the calibration traces, running ``rule`` on a new problem of the same distribution, with
    the same model and settings, loses at most ``max_accuracy_loss`` accuracy against full
    reasoning (paired loss, defined in :mod:`dynasor_graph.eval._calibrate`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["dynasor-graph/calibrated-rule/1"] = FORMAT
    model: str
    data: list[DataFile] = Field(min_length=1)
    settings: dict[str, Any] = Field(description="The CoT settings the traces were recorded with")
    max_accuracy_loss: float = Field(gt=0, lt=1)
    confidence: float = Field(gt=0, lt=1)
    seed: int
    n_traces: int = Field(ge=1, description="Problems used (one trace each)")
    n_order: int = Field(ge=0, description="Traces that ordered the candidates")
    n_calibration: int = Field(ge=1, description="Traces the bound was computed on")
    n_holdout: int = Field(ge=0)
    rule: Rule
    calibration: Outcome
    holdout: Outcome | None
    compared: dict[str, Outcome] = Field(
        description="full, oracle and the presets on the held-out split (calibration if none)")
    candidates: int = Field(ge=1, description="Rules in the search space")
    tested: int = Field(ge=1, description="Rules tested in fixed sequence")
    certified: int = Field(ge=1, description="Rules that passed before the first failure")
    created: str

    def cot_config(self, **overrides: object) -> CoTConfig:
        """The CoT settings that run the certified rule: the recorded sampling and probe
        settings with the rule's chunk size, threshold, hesitation filter, token-confidence
        threshold and probe placement
        (no seed unless
        given: ``overrides`` may set ``seed``)."""
        allowed = set(CoTConfig.model_fields) - {"chunk_size", "certainty_threshold",
                                                  "hesitation_words", "seed", "probe_at",
                                                  "min_probe_confidence"}
        values = {k: v for k, v in self.settings.items() if k in allowed}
        values.update(chunk_size=self.rule.chunk_size, probe_at=self.rule.probe_at,
                      min_probe_confidence=self.rule.min_probe_confidence,
                      certainty_threshold=self.rule.certainty_threshold, seed=None)
        if not self.rule.hesitation_filter:
            values["hesitation_words"] = ()
        elif "hesitation_words" in self.settings:
            values["hesitation_words"] = tuple(self.settings["hesitation_words"])
        unknown = set(overrides) - {"seed"}
        if unknown:
            raise ValueError(f"a calibrated rule only takes a seed override, not "
                             f"{', '.join(sorted(unknown))}: the bound holds for the recorded "
                             "settings")
        values.update(overrides)
        return CoTConfig.model_validate(values)

    @classmethod
    def load(cls, path: Path) -> CalibratedRule:
        """Read and validate a calibrated-rule file; a bad one raises ``DataFormatError``."""
        if not path.is_file():
            raise DataFormatError(f"{path}: no such calibrated-rule file")
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise DataFormatError(f"{path}: not a calibrated-rule file: {where}: "
                                  f"{error['msg']}") from None

    def save(self, path: Path) -> None:
        """Write the file (indented JSON)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
