"""Shape checks for upstream objects, the one gate before anything enters the cache.

Called by the reflector for every list item and watch event, and by the snapshot decoder for
every persisted item, so an object from either source is held to the same rules. The checks
cover exactly what the cache, the filters, the selectors and kube-proxy's decoding of what we
serve rely on, with the types the apiserver guarantees:

* every kind: ``metadata`` an object; ``metadata.name`` a DNS-1123 subdomain (what the
  apiserver requires of all four kinds' names, at most 253 characters; it is also what
  keeps ``namespace/name`` keys unambiguous); ``metadata.namespace`` a DNS-1123 label for
  namespaced kinds and absent (or empty) for Nodes; ``metadata.resourceVersion`` a decimal
  ASCII string that fits in a uint64; ``labels`` and ``annotations`` absent, null or
  string-to-string maps; ``kind`` and ``apiVersion``, when present, the resource's own.
* Service: ``spec`` an object, with ``type`` and ``clusterIP`` strings when present (field
  selectors read them).
* EndpointSlice: ``addressType`` a string; ``endpoints`` null or a list of objects, each with
  ``addresses`` a list of strings, ``nodeName``/``zone``/``hostname`` strings,
  ``conditions`` an object of booleans (every field may be null or absent); ``ports`` null
  or a list of port objects.
* Endpoints: ``subsets`` null or a list of objects whose ``addresses`` and
  ``notReadyAddresses`` are lists of objects with a string ``ip`` and optional string
  ``nodeName``/``hostname``, and whose ``ports`` are port objects.

A port object has an integer ``port`` (not a boolean) and string ``name``, ``protocol`` and
``appProtocol``, each null or absent allowed. Fields nobody here reads (``status``, most of
``spec``) are not checked: they are passed through as they came.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.rv import InvalidResourceVersion, parse_rv

MAX_NAME = 253  # DNS subdomain, the longest name any of the four kinds may have
MAX_NAMESPACE = 63  # a namespace name is a DNS label
MAX_RESOURCE_VERSION = (1 << 64) - 1  # etcd revisions are uint64

_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_LABEL = re.compile(_DNS_LABEL)


def parse_resource_version(value: object) -> int | None:
    """The integer of a resourceVersion string (decimal ASCII, uint64), or None."""
    try:
        return parse_rv(value)
    except InvalidResourceVersion:
        return None


def _name_problem(value: object, what: str, limit: int, grammar: re.Pattern[str]) -> str | None:
    if not isinstance(value, str):
        return f"{what} is {_kind_of(value)}, not a string"
    if not value:
        return f"{what} is empty"
    if len(value) > limit:
        return f"{what} is longer than {limit} characters"
    if not grammar.fullmatch(value):
        return f"{what} {value[:60]!r} is not a lowercase DNS-1123 name"
    return None


def _string_map_problem(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{what} is {_kind_of(value)}, not an object"
    for k, v in value.items():
        if not isinstance(v, str):
            return f"{what}[{str(k)[:60]!r}] is {_kind_of(v)}, not a string"
    return None


def _optional_str(obj: dict[str, Any], field: str, where: str) -> str | None:
    value = obj.get(field)
    if value is None or isinstance(value, str):
        return None
    return f"{where}.{field} is {_kind_of(value)}, not a string"


def _port_problem(port: dict[str, Any]) -> str | None:
    """What is wrong with one port object (its location is the caller's to add)."""
    number = port.get("port")
    if number is not None and (type(number) is not int):  # a bool is not an int here
        return f"port is {_kind_of(number)}, not an integer"
    for field in ("name", "protocol", "appProtocol"):
        value = port.get(field)
        if value is not None and type(value) is not str:
            return f"{field} is {_kind_of(value)}, not a string"
    return None


def _list_of_objects(value: object, what: str) -> tuple[list[dict[str, Any]], str | None]:
    """(the list, None), or ([], why) when ``value`` is not null or a list of objects."""
    if value is None:
        return [], None
    if not isinstance(value, list):
        return [], f"{what} is {_kind_of(value)}, not a list"
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return [], f"{what}[{i}] is {_kind_of(item)}, not an object"
    return value, None


def _ports_problem(value: object, what: str) -> str | None:
    ports, problem = _list_of_objects(value, what)
    if problem:
        return problem
    for i, port in enumerate(ports):
        # The location is only written out for a port that is wrong (every object has ports).
        if problem := _port_problem(port):
            return f"{what}[{i}].{problem}"
    return None


def _metadata_problem(resource: Resource, obj: dict[str, Any]) -> str | None:
    kind = obj.get("kind")
    if kind is not None and kind != resource.kind:
        return f"kind is {str(kind)[:60]!r}, not {resource.kind}"
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != resource.api_version:
        return f"apiVersion is {str(api_version)[:60]!r}, not {resource.api_version}"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return f"metadata is {_kind_of(meta)}, not an object"
    if problem := _name_problem(meta.get("name"), "metadata.name", MAX_NAME, _SUBDOMAIN):
        return problem
    namespace = meta.get("namespace")
    if resource.namespaced:
        if problem := _name_problem(namespace, "metadata.namespace", MAX_NAMESPACE, _LABEL):
            return problem
    elif namespace not in (None, ""):
        return f"metadata.namespace is set on a cluster-scoped {resource.kind}"
    if parse_resource_version(meta.get("resourceVersion")) is None:
        return f"metadata.resourceVersion {str(meta.get('resourceVersion'))[:60]!r} is not a decimal uint64 string"
    return _string_map_problem(meta.get("labels"), "metadata.labels") or _string_map_problem(
        meta.get("annotations"), "metadata.annotations")


def _service_problem(obj: dict[str, Any]) -> str | None:
    spec = obj.get("spec")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return f"spec is {_kind_of(spec)}, not an object"
    return _optional_str(spec, "type", "spec") or _optional_str(spec, "clusterIP", "spec")


def _slice_problem(obj: dict[str, Any]) -> str | None:
    if not isinstance(obj.get("addressType"), str):
        return f"addressType is {_kind_of(obj.get('addressType'))}, not a string"
    endpoints = obj.get("endpoints")
    if endpoints is None:
        endpoints = []
    elif type(endpoints) is not list:
        return f"endpoints is {_kind_of(endpoints)}, not a list"
    # The hot loop of the reflector's checks (up to 100 endpoints per slice, on every event):
    # plain type tests, and a message only once something is wrong.
    for i, ep in enumerate(endpoints):
        if type(ep) is not dict:
            return f"endpoints[{i}] is {_kind_of(ep)}, not an object"
        addresses = ep.get("addresses")
        if addresses is not None:
            if type(addresses) is not list:
                return f"endpoints[{i}].addresses is {_kind_of(addresses)}, not a list"
            for address in addresses:
                if type(address) is not str:
                    return f"endpoints[{i}].addresses has {_kind_of(address)}, not only strings"
        for field in _ENDPOINT_STRINGS:
            value = ep.get(field)
            if value is not None and type(value) is not str:
                return f"endpoints[{i}].{field} is {_kind_of(value)}, not a string"
        conditions = ep.get("conditions")
        if conditions is not None:
            if type(conditions) is not dict:
                return f"endpoints[{i}].conditions is {_kind_of(conditions)}, not an object"
            for field in _CONDITIONS:
                flag = conditions.get(field)
                if flag is not None and type(flag) is not bool:
                    return f"endpoints[{i}].conditions.{field} is {_kind_of(flag)}, not a boolean"
    return _ports_problem(obj.get("ports"), "ports")


_ENDPOINT_STRINGS = ("nodeName", "zone", "hostname")
_CONDITIONS = ("ready", "serving", "terminating")
_ADDRESS_STRINGS = ("nodeName", "hostname")


def _endpoints_problem(obj: dict[str, Any]) -> str | None:
    subsets, problem = _list_of_objects(obj.get("subsets"), "subsets")
    if problem:
        return problem
    for i, subset in enumerate(subsets):
        for field in ("addresses", "notReadyAddresses"):
            where = f"subsets[{i}].{field}"
            addresses, problem = _list_of_objects(subset.get(field), where)
            if problem:
                return problem
            for j, address in enumerate(addresses):
                if type(address.get("ip")) is not str:
                    return f"{where}[{j}].ip is {_kind_of(address.get('ip'))}, not a string"
                for name in _ADDRESS_STRINGS:
                    value = address.get(name)
                    if value is not None and type(value) is not str:
                        return f"{where}[{j}].{name} is {_kind_of(value)}, not a string"
        if problem := _ports_problem(subset.get("ports"), f"subsets[{i}].ports"):
            return problem
    return None


def _nothing_more(obj: dict[str, Any]) -> str | None:
    return None


_BY_KIND: dict[str, Callable[[dict[str, Any]], str | None]] = {
    NODES.kind: _nothing_more,  # beyond metadata, the cache reads only a Node's labels
    SERVICES.kind: _service_problem,
    ENDPOINTSLICES.kind: _slice_problem,
    ENDPOINTS.kind: _endpoints_problem,
}


def object_problem(resource: Resource, obj: object) -> str | None:
    """Why ``obj`` is not a well-formed ``resource`` object (one short phrase), or None if it is."""
    if not isinstance(obj, dict):
        return f"the item is {_kind_of(obj)}, not an object"
    return _metadata_problem(resource, obj) or _BY_KIND.get(resource.kind, _nothing_more)(obj)


def node_labels_problem(value: object) -> str | None:
    """Why ``value`` is not a map of node name -> labels (as persisted for the node topology feed), or None."""
    if not isinstance(value, dict):
        return f"node labels are {_kind_of(value)}, not an object"
    for name, labels in value.items():
        if problem := _name_problem(name, "a node name", MAX_NAME, _SUBDOMAIN):
            return problem
        if labels is None:
            return f"node {name}'s labels are null"
        if problem := _string_map_problem(labels, f"node {name}'s labels"):
            return problem
    return None


def valid_object(resource: Resource, obj: object) -> bool:
    return object_problem(resource, obj) is None


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
