"""What users read points where they can go: the README, docs/ and the pages name the project's own
API reference (docs/api.md), never a contract file outside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READ_BY_USERS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                 *sorted((ROOT / "web" / "public").glob("*.*"))]


@pytest.mark.parametrize("path", READ_BY_USERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text and "API.md" not in text, path


def test_no_code_comment_or_message_points_outside_the_repository() -> None:
    """Docstrings, comments and error messages name docs/api.md too (a user reads them)."""
    code = [p for package in ("app.py", "config.py", "core", "plugins", "services", "app_extensions",
                              "blueprints", "bench", "tests")
            for p in ([ROOT / package] if package.endswith(".py")
                      else sorted((ROOT / package).rglob("*.py")))
            if p != Path(__file__).resolve() and "node_modules" not in p.parts]
    assert len(code) > 50
    stray = [str(p.relative_to(ROOT)) for p in code
             if "../shared" in (text := p.read_text()) or "API.md" in text]
    assert not stray


def test_the_readme_opens_with_the_chart_and_points_at_the_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.splitlines()[2].startswith("![") and "docs/chart.png" in readme.splitlines()[2]
    assert (ROOT / "docs" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "docs/api.md" in readme and "/udf" in readme
