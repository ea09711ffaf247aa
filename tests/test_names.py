"""One name per idea: the renamed settings, and their old names still accepted with a warning."""

from __future__ import annotations

import pytest

from dynasor_graph import MCTSConfig, RebaseConfig, SCConfig


def test_multi_path_budgets_are_token_budget_and_steps_are_chunks() -> None:
    assert SCConfig(token_budget=5000).token_budget == 5000
    tree = MCTSConfig(chunk_size=16, token_budget=300)
    assert (tree.chunk_size, tree.token_budget) == (16, 300)
    assert "max_total_tokens" not in SCConfig.model_fields
    assert "step_tokens" not in RebaseConfig.model_fields


def test_old_names_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"SCConfig.max_total_tokens .* token_budget"):
        assert SCConfig(max_total_tokens=5000).token_budget == 5000
    with pytest.warns(DeprecationWarning, match="step_tokens"):
        assert RebaseConfig.model_validate({"step_tokens": 8}).chunk_size == 8


def test_old_and_new_name_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        MCTSConfig.model_validate({"chunk_size": 8, "step_tokens": 8})
