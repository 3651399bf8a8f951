"""ccxt-gateway 1.9.0 in a virtualenv of its own, for ``bench.gateway`` only.

It is never a dependency of the project: the virtualenv lives outside the repository, in
``$XDG_CACHE_HOME/market-data-bench/ccxt-gateway-1.9.0`` (``~/.cache`` without it) or wherever
``--venv`` says (not under the source tree, which the docs checks and linters walk), and is made on
the first run with the same ``ccxt`` version as the project's, so both sides parse the exchange's
answers with the same CCXT.

ccxt-gateway 1.9.0 has no setting for an exchange's URLs: its exchange subprocess builds the CCXT
instance from ``enableRateLimit``, ``timeout``, ``verbose`` and credentials only, and its REST
setters reach ``timeout``, ``enableRateLimit`` and ``rateLimit`` only. So, without touching its
code, the bench drops a start-up hook (a ``.pth`` file and a module) into that virtualenv: when
``BENCH_GATEWAY_BINANCE_URL`` is set, every ``ccxt.async_support.binance`` instance (``ccxt.pro``'s
binance, the one the gateway builds, derives from it) gets its REST URLs rebased on that URL right
after construction: what the service's ``PROVIDER_URLS`` does to its own CCXT instance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ccxt

GATEWAY = "ccxt-gateway==1.9.0"
DEFAULT_VENV = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "market-data-bench" / "ccxt-gateway-1.9.0")
URL_ENV = "BENCH_GATEWAY_BINANCE_URL"

_HOOK_PTH = f'import os; os.environ.get("{URL_ENV}") and __import__("bench_emulator_urls")\n'
_HOOK = f'''"""Written by the project's bench/gateway_venv.py: CCXT binance REST URLs rebased on ${URL_ENV}."""
import os
from urllib.parse import urlsplit, urlunsplit

import ccxt.async_support

BASE = urlsplit(os.environ["{URL_ENV}"])


def rebase(urls):
    if isinstance(urls, dict):
        return {{k: rebase(v) for k, v in urls.items()}}
    if isinstance(urls, list):
        return [rebase(v) for v in urls]
    if isinstance(urls, str) and urls.startswith(("http://", "https://")):
        parts = urlsplit(urls)
        path = BASE.path.rstrip("/") + parts.path
        return urlunsplit((BASE.scheme, BASE.netloc, path, parts.query, parts.fragment))
    return urls


_init = ccxt.async_support.binance.__init__


def __init__(self, config={{}}):
    _init(self, config)
    self.urls["api"] = rebase(self.urls["api"])


ccxt.async_support.binance.__init__ = __init__
'''


class GatewayUnavailable(RuntimeError):
    """ccxt-gateway could not be installed: the bench skips the comparison."""


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _versions(venv: Path) -> str:
    probe = ("import importlib.metadata as m; "
             "print(m.version('ccxt-gateway'), m.version('ccxt'))")
    try:
        done = subprocess.run([str(_python(venv)), "-c", probe], capture_output=True, text=True,
                              timeout=60)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def ensure_gateway(venv: Path = DEFAULT_VENV) -> Path:
    """The virtualenv's ``ccxt-gateway`` script, installing it first if needed (a minute or so),
    with the URL hook written; ``GatewayUnavailable`` with pip's last words if that fails."""
    wanted = f"{GATEWAY.split('==')[1]} {ccxt.__version__}"
    if _versions(venv) != wanted:
        print(f"installing {GATEWAY} (with ccxt=={ccxt.__version__}) into {venv} ...", flush=True)
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                  GATEWAY, f"ccxt=={ccxt.__version__}"]]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise GatewayUnavailable(f"{' '.join(step[:4])}: {exc}") from exc
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise GatewayUnavailable(f"{' '.join(step[:4])} exited {done.returncode}:\n{tail}")
        if _versions(venv) != wanted:
            raise GatewayUnavailable(f"{venv} holds {_versions(venv) or 'nothing'}, not {wanted}")
    site = subprocess.run([str(_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(site, "bench_emulator_urls.py").write_text(_HOOK)
    Path(site, "bench_emulator_urls.pth").write_text(_HOOK_PTH)
    script = venv / "bin" / "ccxt-gateway"
    if not os.access(script, os.X_OK):
        raise GatewayUnavailable(f"{script} is missing")
    return script
