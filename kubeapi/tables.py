"""Server-side ``meta.k8s.io`` Tables, as ``kubectl get`` asks for them.

The columns and cell formats follow the apiserver's printers
(``pkg/printers/internalversion/printers.go``). The apiserver always prints with
``Wide: true`` (``pkg/printers/storage``), so every row carries the priority-1
columns too and kubectl hides them unless ``-o wide``.

Behaviour copied from ``k8s.io/apiserver`` (``handlers/response.go`` ``asTable``,
``handlers/watch.go`` ``serveWatch``):

* ``includeObject`` is validated before any row is built; ``""`` means ``Metadata``.
* ``Metadata`` rows embed a ``PartialObjectMetadata`` in the *table's* group version.
* A table of one object (get, watch event) has that object's resourceVersion.
* On watch, only the first event's table has column definitions; later events are
  rendered with ``NoHeaders`` and ``columnDefinitions`` is ``null`` (Go nil slice,
  the field has no ``omitempty``). Callers pass ``with_headers=False`` for those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kubeapi import status
from kubeapi.negotiation import negotiate
from kubeapi.resources import CONFIGMAPS, ENDPOINTS, ENDPOINTSLICES, LEASES, NODES, SERVICES, Resource
from kubeapi.status import StatusError
from kubeapi.types import JSONDict

TABLE_V1 = "meta.k8s.io/v1"
TABLE_V1BETA1 = "meta.k8s.io/v1beta1"

INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")

# --- Accept -------------------------------------------------------------------------


def wants_table(accept: str | None) -> bool:
    """Whether the negotiated answer (``kubeapi.negotiation``) is a ``meta.k8s.io`` Table."""
    try:
        return negotiate(accept).table
    except StatusError:
        return False


def table_api_version(accept: str | None) -> str:
    """apiVersion of the Table to answer with: the negotiated one, else v1."""
    try:
        target = negotiate(accept)
    except StatusError:
        return TABLE_V1
    return target.api_version if target.table else TABLE_V1


# --- Age ----------------------------------------------------------------------------


def human_duration(d: timedelta) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``: 2-3 significant figures."""
    seconds = int(d.total_seconds())  # int() truncates toward zero, as Go's int(float) does
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        # Up to 2 s of clock skew counts as "now".
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def translate_timestamp_since(timestamp: object, now: datetime) -> str:
    """The Age cell: ``<unknown>`` without a (parsable) timestamp."""
    t = _parse_time(timestamp)
    if t is None:
        return "<unknown>"
    return human_duration(now - t)


# --- small accessors that keep Any out of the printers --------------------------------


def _d(value: object) -> JSONDict:
    return value if isinstance(value, dict) else {}


def _l(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _s(value: object) -> str:
    return value if isinstance(value, str) else ""


def _i(value: object) -> int | None:
    # bool is an int subclass but never a valid port.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _join_host_port(host: str, port: int | None) -> str:
    """Go's ``net.JoinHostPort``: IPv6 literals get brackets."""
    p = str(port if port is not None else 0)
    return f"[{host}]:{p}" if ":" in host else f"{host}:{p}"


# --- column definitions ---------------------------------------------------------------

_NAME_DOC = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically. Name is primarily "
    "intended for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DOC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. "
    "It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. "
    "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_NODE_ADDRESSES_DOC = "List of addresses reachable to the node. Queried from cloud provider, if available."


def _col(name: str, description: str, *, fmt: str = "", priority: int = 0) -> JSONDict:
    # Every key is always present: TableColumnDefinition has no omitempty fields.
    return {"name": name, "type": "string", "format": fmt, "description": description, "priority": priority}


_NAME_COL = _col("Name", _NAME_DOC, fmt="name")
_AGE_COL = _col("Age", _AGE_DOC)

NODE_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("Status", "The status of the node"),
    _col("Roles", "The roles of the node"),
    _AGE_COL,
    _col("Version", "Kubelet Version reported by the node."),
    _col("Internal-IP", _NODE_ADDRESSES_DOC, priority=1),
    _col("External-IP", _NODE_ADDRESSES_DOC, priority=1),
    _col("OS-Image", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
         priority=1),
    _col("Kernel-Version", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
         priority=1),
    _col("Container-Runtime",
         "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
         priority=1),
)

SERVICE_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("Type", "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are "
                 "ExternalName, ClusterIP, NodePort, and LoadBalancer."),
    _col("Cluster-IP", "clusterIP is the IP address of the service and is usually assigned randomly."),
    _col("External-IP", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept "
                        "traffic for this service."),
    _col("Port(s)", "The list of ports that are exposed by this service."),
    _AGE_COL,
    _col("Selector", "Route service traffic to pods with label keys and values matching this selector.",
         priority=1),
)

ENDPOINTS_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("Endpoints", "The set of all endpoints is the union of all subsets."),
    _AGE_COL,
)

ENDPOINTSLICE_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("AddressType", "addressType specifies the type of address carried by this EndpointSlice."),
    _col("Ports", "ports specifies the list of network ports exposed by each endpoint in this slice."),
    _col("Endpoints", "endpoints is a list of unique endpoints in this slice."),
    _AGE_COL,
)

CONFIGMAP_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("Data", "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', "
                 "'_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored "
                 "in Data must not overlap with the keys in the BinaryData field, this is enforced during "
                 "validation process."),
    _AGE_COL,
)

LEASE_COLUMNS: tuple[JSONDict, ...] = (
    _NAME_COL,
    _col("Holder", "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader "
                   "Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name "
                   "field."),
    _AGE_COL,
)

# --- printers -----------------------------------------------------------------------

_NODE_ROLE_PREFIX = "node-role.kubernetes.io/"
_NODE_ROLE_LABEL = "kubernetes.io/role"


def _node_roles(labels: JSONDict) -> list[str]:
    roles: set[str] = set()
    for k, v in labels.items():
        if k.startswith(_NODE_ROLE_PREFIX):
            if role := k[len(_NODE_ROLE_PREFIX):]:
                roles.add(role)
        elif k == _NODE_ROLE_LABEL and isinstance(v, str) and v:
            roles.add(v)
    return sorted(roles)


def _node_address(addresses: list[Any], kind: str) -> str:
    for a in addresses:
        a = _d(a)
        if a.get("type") == kind:
            return _s(a.get("address"))
    return "<none>"


def print_node(obj: JSONDict, now: datetime) -> list[str]:
    meta, spec, st = _d(obj.get("metadata")), _d(obj.get("spec")), _d(obj.get("status"))
    info = _d(st.get("nodeInfo"))
    ready: str | None = None
    for cond in _l(st.get("conditions")):
        cond = _d(cond)
        if cond.get("type") == "Ready":
            # Later duplicates win, like the Go map the printer builds.
            ready = "Ready" if cond.get("status") == "True" else "NotReady"
    states = [ready or "Unknown"]
    if spec.get("unschedulable"):
        states.append("SchedulingDisabled")
    addresses = _l(st.get("addresses"))
    return [
        _s(meta.get("name")),
        ",".join(states),
        ",".join(_node_roles(_d(meta.get("labels")))) or "<none>",
        translate_timestamp_since(meta.get("creationTimestamp"), now),
        _s(info.get("kubeletVersion")),
        _node_address(addresses, "InternalIP"),
        _node_address(addresses, "ExternalIP"),
        _s(info.get("osImage")) or "<unknown>",
        _s(info.get("kernelVersion")) or "<unknown>",
        _s(info.get("containerRuntimeVersion")) or "<unknown>",
    ]


def _lb_ingress(st: JSONDict) -> str:
    ingress = _d(_d(st.get("loadBalancer"))).get("ingress")
    found: set[str] = set()
    for ing in _l(ingress):
        ing = _d(ing)
        if ip := _s(ing.get("ip")):
            found.add(ip)
        elif host := _s(ing.get("hostname")):
            found.add(host)
    return ",".join(sorted(found))  # sets.String.List() is sorted


def _service_external_ip(svc_type: str, spec: JSONDict, st: JSONDict) -> str:
    external = [_s(ip) for ip in _l(spec.get("externalIPs"))]
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        lb = _lb_ingress(st)
        if external:
            return ",".join((lb.split(",") if lb else []) + external)
        return lb or "<pending>"
    if svc_type == "ExternalName":
        return _s(spec.get("externalName"))
    return "<unknown>"


def _service_ports(ports: list[Any]) -> str:
    pieces = []
    for p in ports:
        p = _d(p)
        port, proto = _i(p.get("port")) or 0, _s(p.get("protocol")) or "TCP"
        node_port = _i(p.get("nodePort")) or 0
        pieces.append(f"{port}:{node_port}/{proto}" if node_port > 0 else f"{port}/{proto}")
    return ",".join(pieces)


def print_service(obj: JSONDict, now: datetime) -> list[str]:
    meta, spec, st = _d(obj.get("metadata")), _d(obj.get("spec")), _d(obj.get("status"))
    # Stored services always have a type; the apiserver prints the defaulted object.
    svc_type = _s(spec.get("type")) or "ClusterIP"
    cluster_ips = _l(spec.get("clusterIPs"))
    cluster_ip = (_s(cluster_ips[0]) if cluster_ips else _s(spec.get("clusterIP"))) or "<none>"
    selector = _d(spec.get("selector"))
    return [
        _s(meta.get("name")),
        svc_type,
        cluster_ip,
        _service_external_ip(svc_type, spec, st),
        _service_ports(_l(spec.get("ports"))) or "<none>",
        translate_timestamp_since(meta.get("creationTimestamp"), now),
        # labels.FormatLabels: sorted k=v pairs.
        ",".join(f"{k}={_s(v)}" for k, v in sorted(selector.items())) or "<none>",
    ]


_MAX_LISTED = 3


def _format_endpoints(subsets: list[Any]) -> str:
    if not subsets:
        return "<none>"
    listed: list[str] = []
    more = False
    count = 0
    for ss in subsets:
        ss = _d(ss)
        addresses = [_s(_d(a).get("ip")) for a in _l(ss.get("addresses"))]
        ports = _l(ss.get("ports"))
        # Headless services may have no ports: list bare IPs then.
        targets: list[int | None] = [_i(_d(p).get("port")) for p in ports] if ports else [None]
        for port in targets:
            count += len(addresses)
            for ip in addresses:
                if len(listed) == _MAX_LISTED:
                    more = True
                    break
                listed.append(ip if port is None and not ports else _join_host_port(ip, port))
    ret = ",".join(listed)
    # Subsets with only notReadyAddresses print as "", as the apiserver does.
    return f"{ret} + {count - _MAX_LISTED} more..." if more else ret


def print_endpoints(obj: JSONDict, now: datetime) -> list[str]:
    meta = _d(obj.get("metadata"))
    return [
        _s(meta.get("name")),
        _format_endpoints(_l(obj.get("subsets"))),
        translate_timestamp_since(meta.get("creationTimestamp"), now),
    ]


def _list_with_more(listed: list[str], more: bool, count: int) -> str:
    ret = ",".join(listed)
    if more:
        return f"{ret} + {count - _MAX_LISTED} more..."
    return ret or "<unset>"


def _slice_ports(ports: list[Any]) -> str:
    listed: list[str] = []
    more = False
    for p in ports:
        p = _d(p)
        if len(listed) < _MAX_LISTED:
            # A nil port means "all ports"; the printer shows the port name or "*".
            num = _i(p.get("port"))
            name = p.get("name")
            listed.append(str(num) if num is not None else (name if isinstance(name, str) else "*"))
        else:
            more = True
    return _list_with_more(listed, more, len(ports))


def _slice_endpoints(endpoints: list[Any]) -> str:
    listed: list[str] = []
    more = False
    count = 0
    for ep in endpoints:
        for address in _l(_d(ep).get("addresses")):
            if len(listed) < _MAX_LISTED:
                listed.append(_s(address))
            else:
                more = True
            count += 1
    return _list_with_more(listed, more, count)


def print_endpointslice(obj: JSONDict, now: datetime) -> list[str]:
    meta = _d(obj.get("metadata"))
    return [
        _s(meta.get("name")),
        _s(obj.get("addressType")),
        _slice_ports(_l(obj.get("ports"))),
        _slice_endpoints(_l(obj.get("endpoints"))),
        translate_timestamp_since(meta.get("creationTimestamp"), now),
    ]


def print_configmap(obj: JSONDict, now: datetime) -> list[str | int]:
    meta = _d(obj.get("metadata"))
    # The apiserver's cell is a number (len(data) + len(binaryData)), under a "string" column.
    return [_s(meta.get("name")), len(_d(obj.get("data"))) + len(_d(obj.get("binaryData"))),
            translate_timestamp_since(meta.get("creationTimestamp"), now)]


def print_lease(obj: JSONDict, now: datetime) -> list[str]:
    meta = _d(obj.get("metadata"))
    return [_s(meta.get("name")), _s(_d(obj.get("spec")).get("holderIdentity")),
            translate_timestamp_since(meta.get("creationTimestamp"), now)]


Printer = Callable[[JSONDict, datetime], Sequence[str | int]]

# Keyed by (group, kind) so a Resource equal in everything that matters still matches.
_PRINTERS: dict[tuple[str, str], tuple[tuple[JSONDict, ...], Printer]] = {
    (NODES.group, NODES.kind): (NODE_COLUMNS, print_node),
    (SERVICES.group, SERVICES.kind): (SERVICE_COLUMNS, print_service),
    (ENDPOINTS.group, ENDPOINTS.kind): (ENDPOINTS_COLUMNS, print_endpoints),
    (ENDPOINTSLICES.group, ENDPOINTSLICES.kind): (ENDPOINTSLICE_COLUMNS, print_endpointslice),
    (CONFIGMAPS.group, CONFIGMAPS.kind): (CONFIGMAP_COLUMNS, print_configmap),
    (LEASES.group, LEASES.kind): (LEASE_COLUMNS, print_lease),
}


def column_definitions(resource: Resource) -> list[JSONDict]:
    """The resource's columns (copies, so callers may mutate them)."""
    return [dict(c) for c in _printer(resource)[0]]


def _printer(resource: Resource) -> tuple[tuple[JSONDict, ...], Printer]:
    try:
        return _PRINTERS[(resource.group, resource.kind)]
    except KeyError:
        raise ValueError(f"no table printer for {resource.kind}") from None


# --- the Table ----------------------------------------------------------------------


def _row_object(resource: Resource, obj: JSONDict, include_object: str, api_version: str) -> JSONDict | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        # Cached objects may lack TypeMeta (informer items); the apiserver's conversion sets it.
        full: JSONDict = {"kind": resource.kind, "apiVersion": resource.api_version}
        full.update((k, v) for k, v in obj.items() if k not in ("kind", "apiVersion"))
        return full
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": _d(obj.get("metadata"))}


def check_include_object(include_object: str) -> str:
    """The TableOptions check the apiserver makes before any row is built; "" means Metadata."""
    if include_object == "":
        return "Metadata"
    if include_object not in INCLUDE_OBJECT_VALUES:
        raise status.bad_request(
            f'Unable to convert to Table as requested: includeObject: Invalid value: "{include_object[:64]}": '
            "must be 'Metadata', 'Object', 'None', or empty"
        )
    return include_object


def render_table(
    resource: Resource,
    objs: Sequence[JSONDict],
    *,
    list_rv: str | None,
    include_object: str = "Metadata",
    with_headers: bool = True,
    api_version: str = TABLE_V1,
    now: datetime | None = None,
) -> JSONDict:
    """A ``Table`` of ``objs``, as the apiserver answers a list, get or watch event.

    ``list_rv`` is the list's resourceVersion; ``None`` for get and watch, where a
    single object's own resourceVersion is used instead. ``with_headers=False`` renders
    a later watch event (``columnDefinitions: null``).
    """
    include_object = check_include_object(include_object)
    columns, printer = _printer(resource)
    when = now if now is not None else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    rows: list[JSONDict] = []
    for obj in objs:
        row: JSONDict = {"cells": list(printer(obj, when))}
        embedded = _row_object(resource, obj, include_object, api_version)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    rv = list_rv
    if rv is None and len(objs) == 1:
        rv = _s(_d(objs[0].get("metadata")).get("resourceVersion")) or None
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": rv} if rv else {},
        "columnDefinitions": [dict(c) for c in columns] if with_headers else None,
        "rows": rows,
    }
