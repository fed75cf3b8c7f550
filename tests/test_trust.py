"""The process entry: the system CA bundle loaded after start-up, never skipped (wrapper.trust),
and the program imported with the collector off and frozen after."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from wrapper.trust import deferred_system_trust, load_later, load_now

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def system_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The machine's default trust made exactly one known CA (OpenSSL reads these at each load)."""
    bundle = tmp_path / "system-bundle.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    (tmp_path / "no-certs").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-certs"))
    return bundle


def system_cas() -> int:
    return ssl.create_default_context().cert_store_stats()["x509_ca"]


def test_contexts_made_while_deferring_get_no_system_cas_until_the_recorded_loads_run(system_bundle: Path) -> None:
    with deferred_system_trust() as deferred:
        verified = ssl.create_default_context()
        unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        unverified.set_default_verify_paths()
        assert verified.cert_store_stats()["x509_ca"] == 0, "fails closed: it trusts no server yet"
        assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    assert len(deferred) == 2
    assert system_cas() == 1, "contexts made after the block load the bundle as usual"
    load_now(deferred)
    assert verified.cert_store_stats()["x509_ca"] == 1
    assert unverified.cert_store_stats()["x509_ca"] == 1
    assert not deferred, "each load runs once"


def test_an_explicit_ca_file_is_loaded_at_once_even_while_deferring(system_bundle: Path) -> None:
    with deferred_system_trust() as deferred:
        ctx = ssl.create_default_context(cafile=str(system_bundle))  # as cache.apiclient does with a kubeconfig's CA
        assert ctx.cert_store_stats()["x509_ca"] == 1
    assert deferred == []


def test_nothing_deferred_starts_no_thread() -> None:
    assert load_later([], 0.0) is None


PROBE = """
import gc, json, sys, threading
sys.argv = ["application-grid-wrapper", "--version"]
from wrapper.__main__ import main
try:
    main()
except SystemExit:
    pass  # --version exits once it has printed
import aiohttp.connector
[timer] = [t for t in threading.enumerate() if t.name == "system-trust"]
before = aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"]
timer.cancel()
timer.function(*timer.args)
after = aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"]
print(json.dumps({"before": before, "after": after, "daemon": timer.daemon, "delay": timer.interval,
                  "gc": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def test_the_entry_point_imports_aiohttp_without_the_bundle_and_a_daemon_thread_loads_it_later(
    system_bundle: Path,
) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["before"] == 0, "aiohttp's default context was made without the system bundle"
    assert got["after"] == 1, "and gets it from the deferred load"
    assert got["daemon"] is True and got["delay"] >= 10, "late, and never keeping the process alive"
    # The imports ran with the collector off; what they made is frozen, and the collector is back.
    assert got["gc"] is True and got["frozen"] > 10_000
