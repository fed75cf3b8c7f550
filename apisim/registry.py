"""Write semantics: validation, defaulting, metadata stamping and optimistic concurrency.

All operations are synchronous (no awaits), so each one is atomic on the event loop.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from apisim import errors
from apisim.patch import apply_patch
from apisim.store import Entry, Store
from kubeapi import status
from kubeapi.resources import CONFIGMAPS, ENDPOINTSLICES, LEASES, SERVICES, Resource, key_of
from kubeapi.types import JSONDict

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's name generator avoids vowels
_SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_CONFIGMAP_BYTES = 1024 * 1024  # corev1.MaxSecretSize, which ConfigMaps share


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def copy_json(obj: Any) -> Any:
    """Deep copy through orjson: fast, and rejects values that are not JSON."""
    return orjson.loads(orjson.dumps(obj))


def _content(obj: JSONDict) -> JSONDict:
    """Everything the generation counts: the object minus metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Registry:
    """Create/update/patch/delete against a Store, the way the apiserver's registry does."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._next_ip = int(_SERVICE_CIDR.network_address) + 10  # .1 is kept for default/kubernetes

    # -- helpers -------------------------------------------------------------------------

    def _scope(self, resource: Resource, obj: JSONDict, namespace: str | None) -> tuple[str | None, str]:
        """Check kind/apiVersion and namespace; fill metadata.namespace; return (namespace, name)."""
        kind, api_version = obj.pop("kind", None), obj.pop("apiVersion", None)
        if kind not in (None, "", resource.kind):
            raise status.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                     f"({resource.kind})")
        if api_version not in (None, "", resource.api_version):
            raise status.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({resource.api_version})")
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise status.bad_request("metadata must be an object")
        if resource.namespaced:
            body_ns = meta.get("namespace") or None
            if namespace and body_ns and body_ns != namespace:
                raise status.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            namespace = namespace or body_ns or "default"
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
            namespace = None
        name = meta.get("name")
        if not name and isinstance(meta.get("generateName"), str) and meta["generateName"]:
            name = meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_ALPHABET)
                                                                 for _ in range(5))
        if not isinstance(name, str) or not name:
            raise errors.invalid_object(resource, "", "metadata.name", "Required value: name or generateName is "
                                        "required", "FieldValueRequired")
        self._validate_name(resource, name)
        return namespace, name

    @staticmethod
    def _validate_name(resource: Resource, name: str) -> None:
        if resource is SERVICES:
            if len(name) > 63 or not _DNS1035.match(name):
                raise errors.invalid_object(resource, name, "metadata.name", f'Invalid value: "{name}": a DNS-1035 '
                                            "label must consist of lower case alphanumeric characters or '-', start "
                                            "with an alphabetic character, and end with an alphanumeric character")
        elif len(name) > 253 or not _SUBDOMAIN.match(name):
            raise errors.invalid_object(resource, name, "metadata.name", f'Invalid value: "{name}": a lowercase '
                                        "RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                                        "'-' or '.', and must start and end with an alphanumeric character")

    def _allocate_ip(self) -> str:
        ip = ipaddress.ip_address(self._next_ip)
        self._next_ip += 1
        if ip not in _SERVICE_CIDR:
            raise status.service_unavailable("the service IP range is exhausted")
        return str(ip)

    def _validate(self, resource: Resource, name: str, obj: JSONDict, old: JSONDict | None) -> None:
        """Per-kind defaulting and the few validations clients are likely to hit."""
        if resource is SERVICES:
            spec = obj.setdefault("spec", {})
            if not isinstance(spec, dict):
                raise errors.invalid_object(resource, name, "spec", "Invalid value: must be an object")
            spec.setdefault("type", "ClusterIP")
            old_ip = (old or {}).get("spec", {}).get("clusterIP")
            ip = spec.get("clusterIP")
            if old_ip and ip and ip != old_ip:
                raise errors.invalid_object(resource, name, "spec.clusterIP", f'Invalid value: "{ip}": field is '
                                            "immutable")
            if not ip:
                ip = old_ip or ("" if spec["type"] == "ExternalName" else self._allocate_ip())
                if ip:
                    spec["clusterIP"] = ip
            if ip:
                spec.setdefault("clusterIPs", [ip])
            spec.setdefault("sessionAffinity", "None")
            for port in spec.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
                    if "port" in port:
                        port.setdefault("targetPort", port["port"])
        elif resource is CONFIGMAPS:
            _validate_configmap(name, obj, old)
        elif resource is LEASES:
            _validate_lease(name, obj)
        elif resource is ENDPOINTSLICES:
            if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
                raise errors.invalid_object(resource, name, "addressType", "Required value: must be one of IPv4, "
                                            "IPv6, FQDN", "FieldValueRequired")
            eps = obj.get("endpoints")
            if eps is not None and (not isinstance(eps, list) or len(eps) > 1000):
                raise errors.invalid_object(resource, name, "endpoints", "Too many: must have at most 1000 items",
                                            "FieldValueTooMany")

    def _commit(self, resource: Resource, etype: str, key: str, obj: JSONDict, prev: Entry | None) -> Entry:
        rv = self.store.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        return self.store.commit(resource, etype, key, obj, prev, rv)

    # -- operations ----------------------------------------------------------------------

    def get(self, resource: Resource, namespace: str | None, name: str) -> Entry:
        entry = self.store.of(resource).objects.get(key_of(namespace if resource.namespaced else None, name))
        if entry is None:
            raise status.not_found(resource.group, resource.plural, name)
        return entry

    def create(self, resource: Resource, body: JSONDict, namespace: str | None = None) -> Entry:
        obj: JSONDict = copy_json(body)
        if not isinstance(obj, dict):
            raise status.bad_request("the body must be a JSON object")
        namespace, name = self._scope(resource, obj, namespace)
        key = key_of(namespace, name)
        if key in self.store.of(resource).objects:
            raise errors.already_exists(resource, name)
        meta = obj["metadata"]
        meta.pop("resourceVersion", None)
        meta.pop("deletionTimestamp", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if resource is ENDPOINTSLICES:
            meta["generation"] = 1
        self._validate(resource, name, obj, None)
        return self._commit(resource, "ADDED", key, obj, None)

    def update(self, resource: Resource, body: JSONDict, namespace: str | None = None, name: str | None = None,
               subresource: str | None = None) -> Entry:
        obj: JSONDict = copy_json(body)
        if not isinstance(obj, dict):
            raise status.bad_request("the body must be a JSON object")
        namespace, body_name = self._scope(resource, obj, namespace)
        if name is not None and body_name != name:
            raise status.bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                                     f"({name})")
        return self._replace(resource, namespace, body_name, obj, subresource)

    def _replace(self, resource: Resource, namespace: str | None, name: str, obj: JSONDict,
                 subresource: str | None) -> Entry:
        key = key_of(namespace, name)
        old = self.store.of(resource).objects.get(key)
        if old is None:
            raise status.not_found(resource.group, resource.plural, name)
        meta = obj["metadata"]
        want = meta.get("resourceVersion")
        if want and want != str(old.rv):
            raise errors.conflict(resource, name)
        if subresource == "status":
            # Only status changes through /status; the rest comes from the stored object.
            status_part = obj.get("status")
            obj = copy_json(old.obj)
            if status_part is None:
                obj.pop("status", None)
            else:
                obj["status"] = status_part
            meta = obj["metadata"]
        elif subresource is not None:
            raise status.not_found(resource.group, f"{resource.plural}/{subresource}", name)
        # Identity fields are owned by the server.
        for k in ("uid", "creationTimestamp", "generation"):
            if k in old.obj["metadata"]:
                meta[k] = old.obj["metadata"][k]
            else:
                meta.pop(k, None)
        meta["resourceVersion"] = str(old.rv)
        self._validate(resource, name, obj, old.obj)
        if obj == old.obj:
            return old  # like etcd's GuaranteedUpdate: no change, no new revision, no event
        if resource is ENDPOINTSLICES and _content(obj) != _content(old.obj):
            meta["generation"] = int(old.obj["metadata"].get("generation", 1)) + 1
        return self._commit(resource, "MODIFIED", key, obj, old)

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: Any,
              content_type: str = "application/merge-patch+json", subresource: str | None = None) -> Entry:
        ns = namespace if resource.namespaced else None
        if resource.namespaced and not ns:
            ns = "default"
        old = self.get(resource, ns, name)
        current = copy_json(old.obj)
        current["kind"], current["apiVersion"] = resource.kind, resource.api_version
        result = apply_patch(content_type, current, patch)
        if not isinstance(result, dict):
            raise status.bad_request("the patch did not produce an object")
        meta = result.get("metadata")
        if not isinstance(meta, dict):
            raise errors.invalid_object(resource, name, "metadata", "Required value", "FieldValueRequired")
        if meta.get("name") != name:
            raise status.bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the "
                                     f"URL ({name})")
        _, body_name = self._scope(resource, result, ns)
        return self._replace(resource, ns, body_name, result, subresource)

    def delete(self, resource: Resource, namespace: str | None, name: str,
               preconditions: JSONDict | None = None) -> Entry:
        ns = namespace if resource.namespaced else None
        if resource.namespaced and not ns:
            ns = "default"
        old = self.get(resource, ns, name)
        pre = preconditions or {}
        if pre.get("resourceVersion") and pre["resourceVersion"] != str(old.rv):
            raise errors.conflict(resource, name, "the ResourceVersion in the precondition "
                                  f"({pre['resourceVersion']}) does not match the ResourceVersion in record "
                                  f"({old.rv}). The object might have been modified")
        if pre.get("uid") and pre["uid"] != old.obj["metadata"].get("uid"):
            raise errors.conflict(resource, name, f"the UID in the precondition ({pre['uid']}) does not match the "
                                  f"UID in record ({old.obj['metadata'].get('uid')}). The object might have been "
                                  "deleted and then recreated")
        final: JSONDict = copy_json(old.obj)
        return self._commit(resource, "DELETED", key_of(ns, name), final, old)

    def reserve_ip(self, ip: str) -> None:
        """Keep seeded ClusterIPs from being handed out again."""
        try:
            addr = int(ipaddress.ip_address(ip))
        except ValueError:
            return
        if addr >= self._next_ip and ipaddress.ip_address(addr) in _SERVICE_CIDR:
            self._next_ip = addr + 1


def _validate_configmap(name: str, obj: JSONDict, old: JSONDict | None) -> None:
    """The apiserver's ValidateConfigMap: config keys, no key in both maps, at most 1 MiB, immutability."""
    size = 0
    keys: dict[str, str] = {}
    for field in ("data", "binaryData"):
        values = obj.get(field)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            # The decoder refuses these before validation runs.
            raise status.bad_request(f"ConfigMap in version \"v1\" cannot be handled as a ConfigMap: {field} "
                                     "must be a map of strings")
        for key, value in values.items():
            if len(key) > 253 or not _CONFIG_KEY.match(key) or key in (".", "..") or key.startswith(".."):
                raise errors.invalid_object(CONFIGMAPS, name, f"{field}[{key}]", f'Invalid value: "{key}": a valid '
                                            "config key must consist of alphanumeric characters, '-', '_' or '.' "
                                            "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                                            "validation is '[-._a-zA-Z0-9]+')")
            if key in keys:
                raise errors.invalid_object(CONFIGMAPS, name, f"{field}[{key}]", f'Invalid value: "{key}": '
                                            f"duplicate of key present in {keys[key]}")
            keys[key] = field
            size += len(key) + len(value)
    if size > MAX_CONFIGMAP_BYTES:
        raise errors.invalid_object(CONFIGMAPS, name, "[]", f"Too long: must have at most {MAX_CONFIGMAP_BYTES} "
                                    "bytes", "FieldValueTooLong")
    if old is not None and old.get("immutable") is True:
        if any(obj.get(f) != old.get(f) for f in ("data", "binaryData")):
            raise errors.invalid_object(CONFIGMAPS, name, "data", "Forbidden: field is immutable when `immutable` "
                                        "is set", "FieldValueForbidden")
        if obj.get("immutable") is not True:
            raise errors.invalid_object(CONFIGMAPS, name, "immutable", "Forbidden: field is immutable when "
                                        "`immutable` is set", "FieldValueForbidden")


def _validate_lease(name: str, obj: JSONDict) -> None:
    """The apiserver's ValidateLeaseSpec for the fields leader election writes."""
    spec = obj.get("spec")
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise status.bad_request('Lease in version "v1" cannot be handled as a Lease: spec must be an object')
    for field in ("holderIdentity", "acquireTime", "renewTime"):
        if spec.get(field) is not None and not isinstance(spec[field], str):
            raise status.bad_request(f'Lease in version "v1" cannot be handled as a Lease: spec.{field} must be a '
                                     "string")
    for field, least in (("leaseDurationSeconds", 1), ("leaseTransitions", 0)):
        value = spec.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise status.bad_request(f'Lease in version "v1" cannot be handled as a Lease: spec.{field} must be '
                                     "an integer")
        if value < least:
            relation = "greater than 0" if least else "greater than or equal to 0"
            raise errors.invalid_object(LEASES, name, f"spec.{field}", f"Invalid value: {value}: must be {relation}")
