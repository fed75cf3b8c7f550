"""TypedDicts for the parts of Kubernetes objects this project reads or writes.

Objects stay plain dicts (parsed with orjson); these types only document and check
the keys we touch. ``total=False`` because the API omits empty fields.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

JSONDict = dict[str, Any]


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str
    uid: str
    generateName: str
    creationTimestamp: str
    deletionTimestamp: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[JSONDict]


class ListMeta(TypedDict, total=False):
    resourceVersion: str
    # "continue" is a Python keyword; lists are built as plain dicts where it matters.
    remainingItemCount: int


class KubeObject(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: ObjectMeta


class NodeStatus(TypedDict, total=False):
    addresses: list[dict[str, str]]
    conditions: list[JSONDict]
    nodeInfo: dict[str, str]


class Node(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: ObjectMeta
    spec: JSONDict
    status: NodeStatus


class ServicePort(TypedDict, total=False):
    name: str
    port: int
    protocol: str
    targetPort: int | str
    nodePort: int


class ServiceSpec(TypedDict, total=False):
    type: str
    clusterIP: str
    clusterIPs: list[str]
    ports: list[ServicePort]
    selector: dict[str, str]
    externalIPs: list[str]
    internalTrafficPolicy: str
    externalTrafficPolicy: str


class Service(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: ObjectMeta
    spec: ServiceSpec
    status: JSONDict


class EndpointConditions(TypedDict, total=False):
    ready: bool | None
    serving: bool | None
    terminating: bool | None


class Endpoint(TypedDict, total=False):
    addresses: list[str]
    conditions: EndpointConditions
    hostname: str
    nodeName: str
    zone: str
    targetRef: JSONDict
    hints: JSONDict


class EndpointPort(TypedDict, total=False):
    name: str
    port: int
    protocol: str
    appProtocol: str


AddressType = Literal["IPv4", "IPv6", "FQDN"]


class EndpointSlice(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: ObjectMeta
    addressType: str
    endpoints: list[Endpoint] | None
    ports: list[EndpointPort] | None


class EndpointAddress(TypedDict, total=False):
    ip: str
    hostname: str
    nodeName: str
    targetRef: JSONDict


class EndpointSubset(TypedDict, total=False):
    addresses: list[EndpointAddress]
    notReadyAddresses: list[EndpointAddress]
    ports: list[JSONDict]


class Endpoints(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: ObjectMeta
    subsets: list[EndpointSubset]


class StatusCause(TypedDict, total=False):
    type: str
    message: str
    field: str


class StatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    causes: list[StatusCause]
    retryAfterSeconds: int


class Status(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: JSONDict
    status: str
    message: str
    reason: str
    details: StatusDetails
    code: int


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]


class WatchEvent(TypedDict):
    type: str
    object: JSONDict
