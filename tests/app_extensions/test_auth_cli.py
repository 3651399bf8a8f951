"""app_extensions/auth_cli.py: ``api-key add`` refuses names nobody could tell apart or revoke."""

from __future__ import annotations

from typing import Any

import pytest

from app import create_app
from app_extensions.auth_cli import MAX_NAME_LENGTH


@pytest.mark.parametrize(("name", "says"), [
    ("", "must not be empty"), ("   ", "must not be empty"),
    ("x" * (MAX_NAME_LENGTH + 1), f"at most {MAX_NAME_LENGTH} characters"), ("x" * 500, "got 500"),
    ("ops\nroot", "control characters"),
])
def test_add_refuses_empty_long_and_unprintable_names(app_config: dict[str, Any], name: str, says: str) -> None:
    runner = create_app(app_config).test_cli_runner()
    refused = runner.invoke(args=["api-key", "add", name])
    assert refused.exit_code == 2 and says in refused.output, refused.output
    assert "Traceback" not in refused.output and "md_" not in refused.output
    assert "no API keys" in runner.invoke(args=["api-key", "list"]).output  # nothing was stored


def test_add_takes_a_name_of_the_longest_length(app_config: dict[str, Any]) -> None:
    runner = create_app(app_config).test_cli_runner()
    added = runner.invoke(args=["api-key", "add", "n" * MAX_NAME_LENGTH])
    assert added.exit_code == 0 and added.output.startswith("md_"), added.output
