"""deploy/ runs what the README says (issue 24: items 2, 14, 22, 23): the image installs the
runtime requirements only and the page's browser packages, every deployment serves through
``serve.py`` under the production server, the compose file has no obsolete ``version``, and the
README creates the systemd unit's user."""

from __future__ import annotations

import re

import yaml

import serve
from tests.support.live_server import ROOT

DEPLOY = ROOT / "deploy"


def test_image_installs_the_runtime_set_and_the_pages_packages() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs and all("-r requirements.txt" in line for line in installs), installs
    assert "npm ci" in dockerfile and "web/package-lock.json" in dockerfile
    assert "COPY --from=web /app/web/node_modules web/node_modules" in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["python", "serve.py"]')
    # The ignore file sits where every builder reads it (the context is the repository root) and
    # keeps the host's node_modules out: the image's come from npm ci.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**/node_modules" in ignore and ".venv" in ignore
    assert not (DEPLOY / "Dockerfile.dockerignore").exists()


def test_every_deployment_serves_through_serve_py_under_the_production_server() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert "version" not in compose
    assert compose["x-app"]["command"] == ["python", "serve.py", "--server",
                                          f"${{SERVER:-{serve.DEFAULT_SERVER}}}"]
    unit = (DEPLOY / "systemd" / "market-data@.service").read_text()
    assert "ExecStart=/opt/market-data/.venv/bin/python serve.py" in unit
    assert f"SERVER={serve.DEFAULT_SERVER}" in unit
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(BIN)/python serve.py\n" in makefile
    readme = (ROOT / "README.md").read_text()
    assert f"under **{serve.DEFAULT_SERVER.capitalize()}**" in readme


def test_readme_creates_the_units_user_and_installs_the_pages_packages() -> None:
    unit = (DEPLOY / "systemd" / "market-data@.service").read_text()
    user = re.search(r"^User=(\S+)$", unit, re.M)
    assert user is not None
    readme = (ROOT / "README.md").read_text()
    without = readme[readme.index("**Without containers**"):]
    assert re.search(rf"useradd --system [^\n]*\b{user.group(1)}\b", without)
    assert "make venv web" in without
