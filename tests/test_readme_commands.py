"""Every command in the README's code blocks runs as written, from the clone's root, after the two set-up commands.

The README's shell blocks (```sh) are read command by command. Each is one of:

- run offline, and its exit code checked (``.venv/bin/application-grid-wrapper demo --help``,
  ``kubectl kustomize manifests/``, ...);
- the demo, ``bash scripts/demo.sh``: started, every command that talks to it (kubectl and curl
  against the wrapper, the simulator and the debug listener) run against it in the README's
  order while it is up, then stopped with SIGTERM, which must end it with exit code 0;
- the simulator alone, ``.venv/bin/python -m apisim``: started, asked for its Nodes, stopped (exit 0);
- listed in ``NOT_RUN`` with the reason it cannot run here (a real cluster, Docker, the test
  command itself, the benchmark).

A command that is none of these fails ``test_every_readme_command_is_run_or_listed``, so a new
README command comes with a way to check it.

Ports: the README's are fixed (51006, 51007, 51008). The demo and the simulator are started on
free ports instead, and the commands' ports rewritten to them, because this machine is shared:
another checkout's tests, or a developer's own demo, may hold the documented ports, and checking
that they are free before binding would race with them. Nothing else in a command is changed.

The demo runs as written (``bash scripts/demo.sh`` with only the port flags added): scripts/test.sh
has installed the demo extra, so it starts without pip and without the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.kubectl import find_kubectls, kubectl_env
from tests.support.waiting import eventually
from tests.test_cli import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELLS = ("sh", "bash", "shell", "console")
# The README's fixed ports: the wrapper, its debug listener, the simulator.
WRAPPER, DEBUG, SIMULATOR = "51006", "51007", "51008"
DEMO = "bash scripts/demo.sh"
APISIM = ".venv/bin/python -m apisim"

# Commands that cannot run here, each with the reason (exact text, comments stripped).
NOT_RUN: dict[str, str] = {
    "bash scripts/test.sh": "the test command itself: it runs this test",
    "docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/edge/application-grid-wrapper:0.1.0 "
    "--push .": "needs Docker with buildx and a registry; no Docker engine runs on CI machines",
    "kubectl apply -k manifests/": "needs a real cluster (its rendering is run: kubectl kustomize manifests/)",
    "kubectl -n edge-system rollout status daemonset/application-grid-wrapper": "needs a real cluster",
    "kubectl -n edge-system get lease application-grid-wrapper-topology-publisher": "needs a real cluster",
    "kubectl -n edge-system get configmaps -l app.kubernetes.io/component=node-topology": "needs a real cluster",
    "kubectl -n kube-system edit configmap kube-proxy": "needs a real cluster, and an editor",
    "kubectl -n kube-system rollout restart daemonset/kube-proxy": "needs a real cluster",
    "kubectl apply -k manifests/kube-proxy/": "needs a real cluster",
    "kubectl -n kube-system patch daemonset kube-proxy --patch-file manifests/kube-proxy/daemonset-patch.yaml":
        "needs a real cluster (the patch's effect is tested with kubectl patch --local, tests/test_deploy_files.py)",
    "kubectl -n kube-system rollout undo daemonset/kube-proxy": "needs a real cluster",
    "kubectl delete -k manifests/": "needs a real cluster",
    "kubectl -n edge-system rollout undo daemonset/application-grid-wrapper": "needs a real cluster",
}
# Whole families that cannot run here, by how they start.
NOT_RUN_PREFIXES: dict[str, str] = {
    ".venv/bin/python -m bench": "the benchmark: minutes of both shared cores (its --help is run)",
}


@dataclass(frozen=True)
class Command:
    text: str  # as written, without its trailing comment
    line: int  # where it starts in the README

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)


def readme_commands() -> list[Command]:
    """The commands of the README's shell blocks, in order: one per line (a trailing backslash
    joins the next), comments and blank lines skipped. Fences may be indented (in list items)."""
    commands: list[Command] = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"(\s*)```(\w*)", lines[i])
        i += 1
        if m is None:
            continue
        indent, lang = m.groups()
        body: list[tuple[int, str]] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i][len(indent):] if lines[i].startswith(indent) else lines[i]))
            i += 1
        i += 1
        if lang not in SHELLS:
            first = next((text.split()[0] for _, text in body if text.strip()), "")
            assert first not in ("kubectl", "curl", "bash", "docker", "python", "python3") and not first.startswith(
                ".venv/"), f"README line {body[0][0]}: a block of commands needs the sh language tag"
            continue
        pending, start = "", 0
        for n, text in body:
            if not pending:
                start = n
            pending += text.rstrip("\\").rstrip() + " " if text.rstrip().endswith("\\") else text
            if text.rstrip().endswith("\\"):
                continue
            words = shlex.split(pending, comments=True)
            if words:
                commands.append(Command(shlex.join(words), start))  # the same words, quoted alike
            pending = ""
    return commands


def not_run_reason(cmd: Command) -> str | None:
    if cmd.text in NOT_RUN:
        return NOT_RUN[cmd.text]
    for prefix, reason in NOT_RUN_PREFIXES.items():
        if cmd.text.startswith(prefix) and "--help" not in cmd.words:
            return reason
    return None


def talks_to_the_demo(cmd: Command) -> bool:
    return any(f"127.0.0.1:{port}" in cmd.text for port in (WRAPPER, DEBUG, SIMULATOR)) and not cmd.text.startswith(
        APISIM)


def runs_offline(cmd: Command) -> bool:
    """Quick commands that need nothing running: the programs' help and version, kustomize's rendering."""
    words = cmd.words
    if words[0].startswith(".venv/bin/") and ("--help" in words or "--version" in words):
        return True
    return words[0] in (".venv/bin/kubectl", "kubectl") and words[1:2] == ["kustomize"]


def kind_of(cmd: Command) -> str | None:
    if not_run_reason(cmd) is not None:
        return "not run"
    if cmd.text == DEMO:
        return "the demo"
    if cmd.text.startswith(APISIM + " "):
        return "the simulator"
    if talks_to_the_demo(cmd):
        return "against the demo"
    if runs_offline(cmd):
        return "offline"
    return None


def test_every_readme_command_is_run_or_listed() -> None:
    commands = readme_commands()
    assert len(commands) >= 10, commands
    unknown = [f"line {c.line}: {c.text}" for c in commands if kind_of(c) is None]
    assert unknown == [], ("README commands this test neither runs nor lists with a reason (add them to "
                           f"NOT_RUN, or make them run offline): {unknown}")
    written = {c.text for c in commands}
    assert set(NOT_RUN) <= written, f"NOT_RUN lists commands the README no longer has: {set(NOT_RUN) - written}"


def test_the_readme_writes_the_projects_programs_from_the_venv() -> None:
    """A fresh clone has no application-grid-wrapper, python -m apisim or kubectl on PATH: after the
    set-up commands they are in .venv/bin."""
    deploy = README.read_text().splitlines().index("## Deploy") + 1
    for cmd in readme_commands():
        first = cmd.words[0]
        assert first not in ("application-grid-wrapper", "python", "python3", "pytest", "ruff", "mypy"), (
            f"README line {cmd.line}: {cmd.text!r} needs the venv: write .venv/bin/{first}")
        if cmd.line < deploy and first.endswith("kubectl"):
            # Before Deploy (whose kubectl is the operator's, for a cluster): the demo's, which a
            # fresh machine has only in the venv.
            assert first == ".venv/bin/kubectl", f"README line {cmd.line}: the demo's kubectl is .venv/bin/kubectl"


# ---- running them --------------------------------------------------------------------------------------------


@dataclass
class Ports:
    """The free ports standing in for the README's: wrapper, debug, simulator."""

    wrapper: int
    debug: int
    simulator: int

    def rewrite(self, text: str) -> str:
        for fixed, port in ((WRAPPER, self.wrapper), (DEBUG, self.debug), (SIMULATOR, self.simulator)):
            text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{port}").replace(f"--port {fixed}", f"--port {port}")
        return text


@pytest.fixture
def env(kube_home: Path) -> dict[str, str]:
    """The user's environment, with kubectl's home (its cache, no kubeconfig) in the test's directory,
    and .venv/bin first on PATH: a plain ``kubectl`` is then the venv's 1.37, as the README allows
    (whatever older kubectl this machine has)."""
    out = kubectl_env(kube_home)
    out["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{out.get('PATH', '')}"
    return out


async def run(text: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("bash", "-c", text, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{text!r} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def collect_output(proc: asyncio.subprocess.Process) -> tuple[list[str], asyncio.Task[None]]:
    """What ``proc`` prints on stdout, line by line as it comes, and the task that reads it."""
    printed: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            printed.append(raw.decode())

    return printed, asyncio.create_task(read())


@contextlib.asynccontextmanager
async def started(text: str, env: dict[str, str], ready: Callable[[str], bool], what: str
                  ) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """A long-running command, until ``ready`` accepts what it printed; SIGTERM at the end, exit 0 expected."""
    proc = await asyncio.create_subprocess_exec("bash", "-c", text, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    printed, reader = collect_output(proc)
    try:
        await eventually(lambda: ready("".join(printed)) or proc.returncode is not None, 60, what)
        assert proc.returncode is None, f"{text!r} exited {proc.returncode}: {''.join(printed)}"
        yield proc, printed
    finally:
        if proc.returncode is None:
            # bash exec'd the program (scripts/demo.sh), or runs it as its child: signal the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await reader
    assert code == 0, f"{text!r} ended with exit code {code} on SIGTERM"


def has_demo_mark() -> bool:
    mark = ROOT / ".venv" / ".demo-installed"
    return mark.is_file() and mark.stat().st_mtime > (ROOT / "pyproject.toml").stat().st_mtime


async def test_every_readme_command_that_can_run_offline_runs_as_written(env: dict[str, str]) -> None:
    if not has_demo_mark() or not (ROOT / ".venv" / "bin" / "kubectl").is_file():
        # Not a skip: a suite that passes without running the README's commands proves nothing about them.
        pytest.fail("the README's set-up has not run in this checkout since pyproject.toml changed: run the "
                    "README's test command, bash scripts/test.sh (it installs the demo extra and marks it), "
                    "so that scripts/demo.sh starts offline here")
    commands = readme_commands()
    for cmd in commands:
        if kind_of(cmd) == "offline":
            code, out, err = await run(cmd.text, env)
            assert code == 0, f"README line {cmd.line}: {cmd.text!r} exited {code}: {err[-2000:]}"
            assert out, f"README line {cmd.line}: {cmd.text!r} printed nothing"

    # The simulator alone, while nothing else runs on its ports.
    [apisim] = [c for c in commands if kind_of(c) == "the simulator"]
    ports = Ports(free_port(), free_port(), free_port())
    async with started(ports.rewrite(apisim.text), env, lambda out: "http://" in out, "the simulator's URL"):
        code, out, err = await run(f".venv/bin/kubectl --server http://127.0.0.1:{ports.simulator} get nodes", env)
        assert code == 0 and "bj-1" in out, err

    # The demo, and every command that talks to it, in the README's order.
    [demo] = [c for c in commands if kind_of(c) == "the demo"]
    against = [c for c in commands if kind_of(c) == "against the demo"]
    assert len(against) >= 5, against
    ports = Ports(free_port(), free_port(), free_port())
    flags = (f" --bind-address 127.0.0.1:{ports.wrapper} --debug-bind-address 127.0.0.1:{ports.debug}"
             f" --simulator-address 127.0.0.1:{ports.simulator}")
    async with started(demo.text + flags, env, lambda out: "Ctrl-C stops the demo" in out, "the demo's instructions"
                       ) as (_, printed):
        assert f".venv/bin/kubectl --server http://127.0.0.1:{ports.wrapper} get endpointslices" in "".join(printed), (
            "the demo prints the README's kubectl")
        watching: list[tuple[Command, asyncio.subprocess.Process, list[str]]] = []
        async with contextlib.AsyncExitStack() as stack:
            for cmd in against:
                text = ports.rewrite(cmd.text)
                if "-w" in cmd.words or "--watch" in cmd.words:
                    proc, printed_so_far = await stack.enter_async_context(
                        started_watch(text, env, f"README line {cmd.line}: the watch's first lines"))
                    watching.append((cmd, proc, printed_so_far))
                    continue
                code, stdout, err = await run(text, env)
                assert code == 0, f"README line {cmd.line}: {text!r} exited {code}: {err[-2000:]}"
                assert stdout.strip(), f"README line {cmd.line}: {text!r} printed nothing"
            for cmd, _, lines in watching:
                # The README's watch sees the relabel that follows it: the demo slice again.
                await eventually(printed_twice(lines), 20, f"README line {cmd.line}: the watch to print the change")


def printed_twice(out: list[str]) -> Callable[[], bool]:
    return lambda: "".join(out).count("servicegrid-demo-svc") >= 2


@contextlib.asynccontextmanager
async def started_watch(text: str, env: dict[str, str], what: str
                        ) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """A kubectl watch: up once it printed the state; ended (SIGTERM) when the block ends."""
    proc = await asyncio.create_subprocess_exec("bash", "-c", f"exec {text}", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    printed, reader = collect_output(proc)
    try:
        await eventually(lambda: "servicegrid-demo-svc" in "".join(printed) or proc.returncode is not None, 30, what)
        assert proc.returncode is None, f"{text!r} exited {proc.returncode}"
        yield proc, printed
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
        await reader


# ---- which kubectl `kubectl apply -k manifests/` needs ----------------------------------------------------------


def test_every_kubectl_from_the_readmes_minimum_renders_the_manifests() -> None:
    """The README names the oldest kubectl whose kustomize renders the manifests (they use
    ``labels:``); every kubectl found on this machine from that version up renders each
    kustomization (the matrix: 1.27-1.33 beside the PATH kubectl, and the test extra's 1.37)."""
    m = re.search(r"`kubectl apply -k manifests/` needs \*\*kubectl (1\.\d+) or newer\*\*", README.read_text())
    assert m is not None, "the README says which kubectl `kubectl apply -k manifests/` needs"
    minimum = tuple(int(x) for x in m.group(1).split("."))
    found = [k for k in find_kubectls() if k.version[0].isdigit() and tuple(map(int, k.version.split("."))) >= minimum]
    assert found, "no kubectl at or above the README's minimum (the test extra installs 1.37)"
    for kubectl in found:
        for path in ("manifests", "manifests/kube-proxy"):
            out = subprocess.run([kubectl.path, "kustomize", path], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60, check=False)
            assert out.returncode == 0, f"{kubectl} kustomize {path}: {out.stderr}"
            assert "kind: " in out.stdout
