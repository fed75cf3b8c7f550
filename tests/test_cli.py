"""The command line: start-up errors are one clear line, and the process runs as documented."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest

from cache.buildinfo import VERSION
from tests.support.waiting import eventually
from wrapper.options import build_parser, parse_address


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wrapper", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {server}
contexts:
- name: c
  context:
    cluster: c
    user: u
current-context: c
users:
- name: u
  user:
    token: secret-token-never-logged
""")
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_defaults_match_the_documented_flags() -> None:
    args = build_parser().parse_args([])
    assert args.bind_address == ("127.0.0.1", 51006)
    assert args.kubeconfig is None
    assert parse_address("[::1]:8080") == ("::1", 8080)


def test_missing_hostname_is_one_line_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
    proc = subprocess.run([sys.executable, "-m", "wrapper", "--bind-address", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert_one_line_error(proc, "--hostname", "NODE_NAME")


def test_bad_kubeconfig_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: [is not a kubeconfig")
    proc = run_cli("--kubeconfig", str(bad), "--hostname", "bj-1", "--bind-address", f"127.0.0.1:{free_port()}",
                   "--cache-dir", "")
    assert_one_line_error(proc, "kubeconfig")


def test_missing_kubeconfig_file_is_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("--kubeconfig", str(tmp_path / "nope"), "--hostname", "bj-1",
                   "--bind-address", f"127.0.0.1:{free_port()}", "--cache-dir", "")
    assert_one_line_error(proc, "kubeconfig")


def test_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("--kubeconfig", str(cfg), "--hostname", "bj-1", "--bind-address", f"127.0.0.1:{port}",
                       "--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(proc, "cannot listen", str(port))


@pytest.mark.parametrize(("spec", "needle"), [("*,nodeport-isolaton", "unknown filter 'nodeport-isolaton'"),
                                              ("topology,-topology", "both added and removed")])
def test_a_bad_filter_selection_is_a_one_line_usage_error(spec: str, needle: str) -> None:
    proc = run_cli("--hostname", "bj-1", f"--filters={spec}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert needle in proc.stderr.splitlines()[-1] and "--filters" in proc.stderr.splitlines()[-1]


def test_the_filters_flag_turns_the_edge_policy_on_and_a_default_filter_off() -> None:
    names = [f.name for f in build_parser().parse_args(["--filters=*,discard-cloud-services,-topology"]).filters]
    assert names == ["discard-cloud-services", "nodeport-isolation"]
    assert [f.name for f in build_parser().parse_args([]).filters] == ["nodeport-isolation", "topology"]


def test_bad_bind_address_is_a_usage_error() -> None:
    proc = run_cli("--hostname", "bj-1", "--bind-address", "nonsense")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


async def test_unreachable_apiserver_keeps_retrying_and_stays_not_ready(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wrapper", "--kubeconfig", str(cfg), "--hostname", "bj-1",
        "--bind-address", f"127.0.0.1:{port}", "--debug-bind-address", f"127.0.0.1:{free_port()}",
        "--cache-dir", str(tmp_path / "cache"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        statuses: list[int] = []
        async with aiohttp.ClientSession() as s:

            async def three_answers() -> bool:
                """Ask /readyz and /livez once (the listener may not be up yet); True at the third answer."""
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with s.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        statuses.append(resp.status)
                    async with s.get(f"http://127.0.0.1:{port}/livez") as resp:
                        assert resp.status == 200
                return len(statuses) >= 3

            await eventually(three_answers, 20, "three answers from /readyz", interval=0.1)
        assert set(statuses) == {503}
        assert proc.returncode is None  # still running, still retrying
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    text = err.decode()
    assert "Traceback" not in text
    assert "secret-token-never-logged" not in text


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]])
def test_help_is_available(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0
    assert "--bind-address" in proc.stdout


def test_version_prints_the_build_and_python_and_exits_zero() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("application-grid-wrapper ") and "Python" in proc.stdout
    assert sys.version.split()[0] in proc.stdout


@pytest.mark.parametrize(("content", "needle"), [
    ("", "the file is empty"),
    ("   \n", "the file is empty"),
    ("[1, 2]\n", "not a kubeconfig"),
    ("clusters: [\n", "not valid YAML (line"),
    ("apiVersion: v1\nkind: Config\n", "names no cluster"),
    ("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:1'}\n",
     "no current-context"),
])
def test_a_bad_kubeconfig_gets_one_line_naming_the_file_and_the_problem(tmp_path: Path, content: str,
                                                                      needle: str) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text(content)
    proc = run_cli("--kubeconfig", str(bad), "--hostname", "bj-1", "--cache-dir", "")
    assert_one_line_error(proc, str(bad), needle)
    assert proc.returncode == 2


def test_a_directory_given_as_kubeconfig_is_named_as_a_directory(tmp_path: Path) -> None:
    proc = run_cli("--kubeconfig", str(tmp_path), "--hostname", "bj-1", "--cache-dir", "")
    assert_one_line_error(proc, str(tmp_path), "is a directory")


@pytest.mark.parametrize("flag", ["--snapshot-interval", "--offline-grace", "--watch-write-timeout",
                                  "--read-header-timeout", "--idle-timeout"])
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "1_0", "\u0661"])
def test_bad_flag_values_are_refused_at_start(flag: str, value: str) -> None:
    proc = run_cli(flag, value, "--hostname", "bj-1")
    assert proc.returncode == 2 and "usage:" in proc.stderr and flag in proc.stderr, proc.stderr


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--snapshot-interval", "-5", "'-5' must be a finite number greater than 0"),
    ("--max-connections", "-3", "'-3' must be a finite number greater than 0"),
    ("--snapshot-interval", "ten", "'ten' is not a number"),
    ("--max-connections", "2.5", "'2.5' is not a whole number"),
])
def test_a_refused_flag_value_is_told_what_is_wrong_with_it(flag: str, value: str, says: str) -> None:
    proc = run_cli(flag, value, "--hostname", "bj-1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"application-grid-wrapper: error: argument {flag}: {says}", proc.stderr


async def test_kubeconfig_env_is_honoured_when_no_flag_is_given_and_the_log_says_which(tmp_path: Path) -> None:
    from apisim.seeds import servicegrid_demo
    from apisim.server import Simulator
    from tests.support.stack import running_simulator

    async with running_simulator(Simulator(servicegrid_demo())) as sim:
        config = write_kubeconfig(tmp_path / "from-env", sim.url)
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wrapper", "--hostname", "bj-1", "--bind-address", f"127.0.0.1:{port}",
            "--debug-bind-address", f"127.0.0.1:{free_port()}", "--cache-dir", "",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**{k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"},
                 "KUBECONFIG": str(config)})
        try:
            assert proc.stderr is not None
            seen: list[str] = []
            async with asyncio.timeout(30):
                while not any("from $KUBECONFIG" in line for line in seen):
                    line = (await proc.stderr.readline()).decode()
                    assert line, f"the wrapper exited: {seen}"
                    seen.append(line)
            assert any(str(config) in line and sim.url in line for line in seen), seen
            async with aiohttp.ClientSession() as http:
                async def ready() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(ready, 30, "the wrapper's /readyz 200")
        finally:
            proc.terminate()
            await proc.wait()


def test_the_installed_package_metadata_carries_the_version_the_wrapper_reports() -> None:
    # The wrapper reports cache.buildinfo.VERSION without reading its metadata; pyproject.toml
    # takes the version from there, so an install can never say another.
    assert metadata.version("application-grid-wrapper") == VERSION
    assert run_cli("--version").stdout.split()[1] == VERSION
