"""A griffe extension for the docs site: the package's docstrings use Sphinx roles
(``:func:`~dynasor_graph.solve```), which mkdocstrings' Google-style parser leaves as text.
This turns each into a plain code span (``~`` keeps the last name only), so the API pages read
``solve`` instead of ``:func:`~dynasor_graph.solve```."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|exc|obj|const):`(~?)([^`]+)`")


_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)  # reST's "Usage::" before a block


def _plain(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class SphinxRolesToCode(griffe.Extension):
    """Rewrite Sphinx cross-reference roles in every docstring as code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_plain, obj.docstring.value)
            obj.docstring.value = _LITERAL_BLOCK.sub(":", text)
