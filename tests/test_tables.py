"""Server-side Tables: Accept negotiation, printer columns and cells, row objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from kubeapi import tables
from kubeapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, SERVICES, Resource
from kubeapi.status import StatusError
from kubeapi.types import JSONDict

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)


def ts(ago: timedelta) -> str:
    return (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def cells(resource: Resource, obj: JSONDict) -> list[Any]:
    table = tables.render_table(resource, [obj], list_rv=None, now=NOW)
    row: list[Any] = table["rows"][0]["cells"]
    return row


def names(resource: Resource) -> list[tuple[str, int]]:
    return [(c["name"], c["priority"]) for c in tables.column_definitions(resource)]


# --- Accept ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "table", "version"),
    [
        (KUBECTL_ACCEPT, True, "meta.k8s.io/v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", True, "meta.k8s.io/v1beta1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io",
         True, "meta.k8s.io/v1beta1"),
        ("application/json ; as = Table ; v = v1 ; g = meta.k8s.io", True, "meta.k8s.io/v1"),
        ('application/json;as="Table";v="v1beta1";g="meta.k8s.io"', True, "meta.k8s.io/v1beta1"),
        ("Application/JSON;AS=table;V=V1;G=Meta.K8s.io", True, "meta.k8s.io/v1"),
        ("application/json", False, "meta.k8s.io/v1"),
        ("application/json, */*", False, "meta.k8s.io/v1"),
        (None, False, "meta.k8s.io/v1"),
        ("", False, "meta.k8s.io/v1"),
        ("application/yaml;as=Table;v=v1;g=meta.k8s.io", False, "meta.k8s.io/v1"),
        ("application/json;as=Table;v=v2;g=meta.k8s.io", False, "meta.k8s.io/v1"),
        ("application/json;as=Table;v=v1", False, "meta.k8s.io/v1"),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", False, "meta.k8s.io/v1"),
        ("application/json;as=Table;v=v1;g=meta.k8s.io;q=0, application/json", False, "meta.k8s.io/v1"),
        ("application/json;as=Table;v=v1;g=meta.k8s.io;q=0.5,application/json;as=Table;v=v1beta1;g=meta.k8s.io",
         True, "meta.k8s.io/v1beta1"),
        ('application/json;foo="a,b;c";as=Table;v=v1beta1;g=meta.k8s.io', True, "meta.k8s.io/v1beta1"),
        ("application/json;as=Table;v=v1;g=meta.k8s.io;q=bogus", True, "meta.k8s.io/v1"),
        (",,;;", False, "meta.k8s.io/v1"),
    ],
)
def test_accept_negotiates_table_and_its_version(accept: str | None, table: bool, version: str) -> None:
    assert tables.wants_table(accept) is table
    assert tables.table_api_version(accept) == version


# --- Age ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=-3), "<invalid>"),
        (timedelta(seconds=-1.5), "0s"),
        (timedelta(seconds=-1), "0s"),
        (timedelta(0), "0s"),
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=5.9), "5s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=2), "2m"),
        (timedelta(minutes=3, seconds=2), "3m2s"),
        (timedelta(minutes=9, seconds=59), "9m59s"),
        (timedelta(minutes=10, seconds=30), "10m"),
        (timedelta(minutes=179), "179m"),
        (timedelta(hours=3), "3h"),
        (timedelta(hours=3, minutes=5), "3h5m"),
        (timedelta(hours=7, minutes=59), "7h59m"),
        (timedelta(hours=8, minutes=30), "8h"),
        (timedelta(hours=47), "47h"),
        (timedelta(days=2), "2d"),
        (timedelta(days=2, hours=5), "2d5h"),
        (timedelta(days=7, hours=23), "7d23h"),
        (timedelta(days=8, hours=5), "8d"),
        (timedelta(days=729), "729d"),
        (timedelta(days=730), "2y"),
        (timedelta(days=800), "2y70d"),
        (timedelta(days=365 * 8 - 1), "7y364d"),
        (timedelta(days=365 * 8 + 100), "8y"),
    ],
)
def test_human_duration_follows_kubernetes_rules(delta: timedelta, expected: str) -> None:
    assert tables.human_duration(delta) == expected


def test_age_is_unknown_without_a_parsable_creation_timestamp() -> None:
    assert tables.translate_timestamp_since(None, NOW) == "<unknown>"
    assert tables.translate_timestamp_since("", NOW) == "<unknown>"
    assert tables.translate_timestamp_since("yesterday", NOW) == "<unknown>"
    assert tables.translate_timestamp_since(ts(timedelta(minutes=3, seconds=2)), NOW) == "3m2s"


def test_naive_now_is_taken_as_utc() -> None:
    obj = {"metadata": {"name": "a", "creationTimestamp": ts(timedelta(seconds=5))}}
    table = tables.render_table(ENDPOINTS, [obj], list_rv=None, now=NOW.replace(tzinfo=None))
    assert table["rows"][0]["cells"][2] == "5s"


# --- Node -----------------------------------------------------------------------------


def node(**over: Any) -> JSONDict:
    obj: JSONDict = {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": "n1",
            "resourceVersion": "42",
            "creationTimestamp": ts(timedelta(days=2)),
            "labels": {"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "",
                       "kubernetes.io/role": "edge", "node-role.kubernetes.io/": "", "app": "x"},
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.1"},
                          {"type": "ExternalIP", "address": "1.2.3.4"}],
            "nodeInfo": {"kubeletVersion": "v1.30.1", "osImage": "Ubuntu 22.04", "kernelVersion": "6.5.0",
                         "containerRuntimeVersion": "containerd://1.7.2"},
        },
    }
    obj.update(over)
    return obj


def test_node_columns_match_the_apiserver_printer_with_wide_columns_at_priority_1() -> None:
    assert names(NODES) == [
        ("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0),
        ("Internal-IP", 1), ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1), ("Container-Runtime", 1),
    ]


def test_node_cells_show_ready_sorted_roles_and_wide_fields() -> None:
    assert cells(NODES, node()) == [
        "n1", "Ready", "control-plane,edge,worker", "2d", "v1.30.1",
        "10.0.0.1", "1.2.3.4", "Ubuntu 22.04", "6.5.0", "containerd://1.7.2",
    ]


@pytest.mark.parametrize(
    ("conditions", "unschedulable", "expected"),
    [
        ([{"type": "Ready", "status": "False"}], False, "NotReady"),
        ([{"type": "Ready", "status": "Unknown"}], False, "NotReady"),
        ([], False, "Unknown"),
        ([{"type": "Ready", "status": "True"}], True, "Ready,SchedulingDisabled"),
        ([], True, "Unknown,SchedulingDisabled"),
        ([{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}], False, "NotReady"),
    ],
)
def test_node_status_reflects_ready_condition_and_cordon(
    conditions: list[JSONDict], unschedulable: bool, expected: str
) -> None:
    obj = node(spec={"unschedulable": unschedulable})
    obj["status"]["conditions"] = conditions
    assert cells(NODES, obj)[1] == expected


def test_bare_node_renders_placeholders() -> None:
    assert cells(NODES, {"metadata": {"name": "bare"}}) == [
        "bare", "Unknown", "<none>", "<unknown>", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>",
    ]


# --- Service --------------------------------------------------------------------------


def service(spec: JSONDict, status: JSONDict | None = None) -> JSONDict:
    obj: JSONDict = {
        "metadata": {"name": "web", "namespace": "default", "creationTimestamp": ts(timedelta(minutes=3, seconds=2))},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_service_columns_match_the_apiserver_printer() -> None:
    assert names(SERVICES) == [
        ("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0), ("Port(s)", 0), ("Age", 0),
        ("Selector", 1),
    ]


def test_cluster_ip_service_cells() -> None:
    spec = {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}, {"port": 9153}],
            "selector": {"k8s-app": "kube-dns", "app": "dns"}}
    assert cells(SERVICES, service(spec)) == [
        "web", "ClusterIP", "10.96.0.10", "<none>", "53/UDP,53/TCP,9153/TCP", "3m2s", "app=dns,k8s-app=kube-dns",
    ]


def test_node_port_service_shows_node_ports_and_external_ips() -> None:
    spec = {"type": "NodePort", "clusterIP": "10.96.1.1", "externalIPs": ["5.5.5.5", "6.6.6.6"],
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}]}
    row = cells(SERVICES, service(spec))
    assert row[2:5] == ["10.96.1.1", "5.5.5.5,6.6.6.6", "80:30080/TCP"]
    assert row[6] == "<none>"


@pytest.mark.parametrize(
    ("external_ips", "ingress", "expected"),
    [
        ([], [], "<pending>"),
        ([], [{"ip": "9.9.9.9"}, {"hostname": "lb.example.com"}, {"ip": "1.1.1.1"}, {"ip": "9.9.9.9"}],
         "1.1.1.1,9.9.9.9,lb.example.com"),
        (["5.5.5.5"], [{"ip": "9.9.9.9"}], "9.9.9.9,5.5.5.5"),
        (["5.5.5.5"], [], "5.5.5.5"),
    ],
)
def test_load_balancer_external_ip_combines_ingress_and_external_ips(
    external_ips: list[str], ingress: list[JSONDict], expected: str
) -> None:
    spec = {"type": "LoadBalancer", "clusterIP": "10.96.1.2", "externalIPs": external_ips,
            "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}
    assert cells(SERVICES, service(spec, {"loadBalancer": {"ingress": ingress}}))[3] == expected


def test_external_name_and_headless_services() -> None:
    ext = cells(SERVICES, service({"type": "ExternalName", "externalName": "db.example.com"}))
    assert ext[1:5] == ["ExternalName", "<none>", "db.example.com", "<none>"]
    headless = cells(SERVICES, service({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"]}))
    assert headless[2] == "None"


def test_bare_service_renders_placeholders() -> None:
    assert cells(SERVICES, {"metadata": {"name": "s"}}) == [
        "s", "ClusterIP", "<none>", "<none>", "<none>", "<unknown>", "<none>",
    ]


# --- Endpoints ------------------------------------------------------------------------


def endpoints(subsets: Any) -> JSONDict:
    return {"metadata": {"name": "web", "creationTimestamp": ts(timedelta(seconds=30))}, "subsets": subsets}


def test_endpoints_columns_match_the_apiserver_printer() -> None:
    assert names(ENDPOINTS) == [("Name", 0), ("Endpoints", 0), ("Age", 0)]


@pytest.mark.parametrize(
    ("subsets", "expected"),
    [
        (None, "<none>"),
        ([], "<none>"),
        ([{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]}], "10.1.0.1:80"),
        ([{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}], "ports": [{"port": 80}, {"port": 443}]}],
         "10.1.0.1:80,10.1.0.2:80,10.1.0.1:443 + 1 more..."),
        ([{"addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}]}], "10.1.0.1,10.1.0.2"),
        ([{"addresses": [{"ip": f"10.1.0.{i}"} for i in range(1, 6)], "ports": [{"port": 8080}]}],
         "10.1.0.1:8080,10.1.0.2:8080,10.1.0.3:8080 + 2 more..."),
        ([{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 80}]}], "[fd00::1]:80"),
        ([{"notReadyAddresses": [{"ip": "10.1.0.9"}], "ports": [{"port": 80}]}], ""),
        ([{"addresses": [{"ip": "10.1.0.1"}], "ports": [{"port": 80}]},
          {"addresses": [{"ip": "10.2.0.1"}, {"ip": "10.2.0.2"}, {"ip": "10.2.0.3"}], "ports": [{"port": 81}]}],
         "10.1.0.1:80,10.2.0.1:81,10.2.0.2:81 + 1 more..."),
    ],
)
def test_endpoints_cell_lists_up_to_three_host_ports(subsets: Any, expected: str) -> None:
    assert cells(ENDPOINTS, endpoints(subsets)) == ["web", expected, "30s"]


# --- EndpointSlice --------------------------------------------------------------------


def test_endpointslice_columns_match_the_apiserver_printer() -> None:
    assert names(ENDPOINTSLICES) == [("Name", 0), ("AddressType", 0), ("Ports", 0), ("Endpoints", 0), ("Age", 0)]


def test_endpointslice_cells() -> None:
    obj = {
        "metadata": {"name": "web-abcde", "creationTimestamp": ts(timedelta(hours=5))},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.2"], "conditions": {"ready": False}}],
    }
    assert cells(ENDPOINTSLICES, obj) == ["web-abcde", "IPv4", "80", "10.1.0.1,10.1.0.2", "5h"]


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        (None, "<unset>"),
        ([], "<unset>"),
        ([{"name": "all", "port": None}], "all"),
        ([{"protocol": "TCP"}], "*"),
        ([{"port": 1}, {"port": 2}, {"port": 3}, {"port": 4}, {"port": 5}], "1,2,3 + 2 more..."),
        ([{"port": 1}, {"port": 2}, {"port": 3}], "1,2,3"),
    ],
)
def test_endpointslice_ports_cell(ports: Any, expected: str) -> None:
    obj = {"metadata": {"name": "s"}, "addressType": "IPv4", "ports": ports}
    assert cells(ENDPOINTSLICES, obj)[2] == expected


@pytest.mark.parametrize(
    ("eps", "expected"),
    [
        (None, "<unset>"),
        ([], "<unset>"),
        ([{"addresses": []}], "<unset>"),
        ([{"addresses": ["a", "b"]}, {"addresses": ["c", "d"]}, {"addresses": ["e"]}], "a,b,c + 2 more..."),
    ],
)
def test_endpointslice_endpoints_cell(eps: Any, expected: str) -> None:
    obj = {"metadata": {"name": "s"}, "addressType": "FQDN", "endpoints": eps}
    assert cells(ENDPOINTSLICES, obj)[3] == expected


def test_bare_endpointslice_renders_placeholders() -> None:
    assert cells(ENDPOINTSLICES, {"metadata": {"name": "s"}}) == ["s", "", "<unset>", "<unset>", "<unknown>"]


# --- the Table document -----------------------------------------------------------------


@pytest.mark.parametrize("resource", [NODES, SERVICES, ENDPOINTS, ENDPOINTSLICES])
def test_every_row_has_one_json_cell_per_column_even_for_sparse_objects(resource: Resource) -> None:
    sparse: list[JSONDict] = [
        {},
        {"metadata": {}},
        {"metadata": {"name": "x", "labels": None}, "spec": None, "status": None},
        {"metadata": {"name": "y"}, "spec": {"ports": [{}], "selector": None}, "status": {"conditions": [{}]},
         "subsets": [{}], "endpoints": [{}], "ports": [{}]},
    ]
    table = tables.render_table(resource, sparse, list_rv="7", now=NOW)
    ncols = len(table["columnDefinitions"])
    for row in table["rows"]:
        assert len(row["cells"]) == ncols
        assert all(isinstance(c, str | int) for c in row["cells"])
    orjson.dumps(table)


def test_list_table_shape_and_column_definition_keys() -> None:
    table = tables.render_table(NODES, [node(), node()], list_rv="100", now=NOW)
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "100"}
    assert len(table["rows"]) == 2
    name_col = table["columnDefinitions"][0]
    assert name_col["format"] == "name" and name_col["type"] == "string"
    for col in table["columnDefinitions"]:
        assert set(col) == {"name", "type", "format", "description", "priority"}


def test_empty_list_has_empty_rows_and_headers() -> None:
    table = tables.render_table(SERVICES, [], list_rv="5")
    assert table["rows"] == []
    assert len(table["columnDefinitions"]) == 7
    assert table["metadata"] == {"resourceVersion": "5"}


def test_single_object_table_carries_the_object_resource_version() -> None:
    assert tables.render_table(NODES, [node()], list_rv=None)["metadata"] == {"resourceVersion": "42"}
    assert tables.render_table(NODES, [{"metadata": {"name": "a"}}], list_rv=None)["metadata"] == {}


def test_watch_event_tables_after_the_first_have_null_column_definitions() -> None:
    table = tables.render_table(NODES, [node()], list_rv=None, with_headers=False, now=NOW)
    assert table["columnDefinitions"] is None
    assert len(table["rows"][0]["cells"]) == len(tables.NODE_COLUMNS)


def test_v1beta1_table_uses_v1beta1_for_table_and_partial_metadata() -> None:
    table = tables.render_table(NODES, [node()], list_rv=None, api_version="meta.k8s.io/v1beta1")
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert table["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"


def test_include_object_metadata_is_the_default_and_embeds_partial_object_metadata() -> None:
    obj = node()
    for value in ("Metadata", ""):
        row = tables.render_table(NODES, [obj], list_rv=None, include_object=value)["rows"][0]
        assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": obj["metadata"]}
    assert tables.render_table(NODES, [obj], list_rv=None)["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_include_object_object_embeds_the_full_object_with_type_meta() -> None:
    obj = service({"type": "ClusterIP", "clusterIP": "10.0.0.1"})  # no kind/apiVersion, like informer items
    row = tables.render_table(SERVICES, [obj], list_rv=None, include_object="Object")["rows"][0]
    assert row["object"] == {"kind": "Service", "apiVersion": "v1", **obj}
    slice_row = tables.render_table(ENDPOINTSLICES, [{"metadata": {"name": "s"}}], list_rv=None,
                                    include_object="Object")["rows"][0]
    assert slice_row["object"]["apiVersion"] == "discovery.k8s.io/v1"
    assert slice_row["object"]["kind"] == "EndpointSlice"


def test_include_object_none_leaves_rows_without_objects() -> None:
    row = tables.render_table(NODES, [node()], list_rv=None, include_object="None")["rows"][0]
    assert "object" not in row


@pytest.mark.parametrize("value", ["bogus", "object", "none"])
def test_invalid_include_object_is_a_bad_request_even_for_empty_lists(value: str) -> None:
    with pytest.raises(StatusError) as err:
        tables.render_table(NODES, [], list_rv="1", include_object=value)
    assert err.value.code == 400
    assert err.value.status["reason"] == "BadRequest"
    assert value in err.value.status["message"]


def test_rendering_does_not_mutate_inputs_or_share_column_definitions() -> None:
    obj = node()
    before = orjson.dumps(obj)
    t1 = tables.render_table(NODES, [obj], list_rv=None, include_object="Object")
    t1["columnDefinitions"][0]["name"] = "changed"
    t2 = tables.render_table(NODES, [obj], list_rv=None)
    assert t2["columnDefinitions"][0]["name"] == "Name"
    assert orjson.dumps(obj) == before


def test_unknown_resource_has_no_printer() -> None:
    pods = Resource("", "v1", "pods", "Pod", namespaced=True)
    with pytest.raises(ValueError, match="Pod"):
        tables.render_table(pods, [], list_rv="1")
