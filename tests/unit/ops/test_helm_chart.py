"""The Helm chart renders, lints and produces a sane, least-privilege deployment.

Rendered offline with helm-python-sdk (Helm's own engine as a shared library), so
this runs without a cluster or a helm binary.
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from topology.model import parse_topology
from topology.settings import KafkaSettings

CHART = Path(__file__).resolve().parents[3] / "helm" / "clinstream"
PRODUCTION = yaml.safe_load((CHART / "values-production.yaml").read_text())
WORKLOADS = ("StatefulSet", "Deployment")

Obj = dict[str, Any]


@cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: Obj | None = None, release: str = "rel", namespace: str = "clin") -> list[Obj]:
    manifests = _chart().render(values, name=release, namespace=namespace)
    docs: list[Obj] = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _split_values() -> Obj:
    """Production values with route workers beside the workers (``run worker --role``)."""
    values = copy.deepcopy(PRODUCTION)
    values["worker"]["route"] = {"replicas": 2}
    return values


@cache
def rendered(profile: str) -> tuple[Obj, ...]:
    return tuple(render(profile_values(profile)))


def profile_values(profile: str) -> Obj | None:
    return {"default": None, "production": copy.deepcopy(PRODUCTION), "split": _split_values()}[profile]


PROFILES = ["default", "production", "split"]


def kinds(docs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(docs: tuple[Obj, ...]) -> list[Obj]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def pod_specs(docs: tuple[Obj, ...]) -> list[tuple[str, Obj]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in (*WORKLOADS, "Job")
    ]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def topology_values(profile: str) -> Obj:
    return _chart().values["topology"] if profile == "default" else PRODUCTION["topology"]


# --- render and lint --------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_is_clean(profile: str) -> None:
    values = profile_values(profile)
    report = helm.lint(CHART, values, strict=True, namespace="clin", kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [msg for msg in report["messages"] if msg["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("profile", PROFILES)
def test_expected_kinds_are_rendered(profile: str) -> None:
    present = {d["kind"] for d in rendered(profile)}
    assert {
        "ConfigMap", "Service", "StatefulSet", "Deployment", "ServiceMonitor", "PodDisruptionBudget", "Job",
    } <= present
    # Production brings its own Secrets (existingSecret); the default install creates one.
    assert ("Secret" in present) == (profile == "default")
    assert all(d["metadata"]["name"] and len(d["metadata"]["name"]) <= 63 for d in rendered(profile))


@pytest.mark.parametrize("profile", PROFILES)
def test_object_names_are_unique_per_kind(profile: str) -> None:
    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered(profile)]
    assert len(keys) == len(set(keys))


# --- topology -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_topology_configmaps_hold_a_valid_topology(profile: str) -> None:
    docs = rendered(profile)
    for name in ("rel-clinstream-topology", "rel-clinstream-topology-apply"):
        text = one(docs, "ConfigMap", name)["data"]["topology.yaml"]
        topology = parse_topology(text, name)
        assert topology.model_dump(exclude_defaults=True) == parse_topology(
            yaml.safe_dump(topology_values(profile))
        ).model_dump(exclude_defaults=True)


def test_large_integers_survive_rendering() -> None:
    text = one(rendered("production"), "ConfigMap", "rel-clinstream-topology")["data"]["topology.yaml"]
    topology = parse_topology(text)
    audit = topology.derived_topics()["audit.disclosures"]
    assert topology.resolved(audit)[2]["retention.ms"] == "220898160000"
    assert topology.topic_defaults.partitions == 24


@pytest.mark.parametrize("profile", PROFILES)
def test_every_pod_mounts_the_topology(profile: str) -> None:
    for where, spec in pod_specs(rendered(profile)):
        container = spec["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/clinstream/topology.yaml")
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"].startswith("rel-clinstream-topology"), where
        assert "/etc/clinstream/topology.yaml" in container["args"], where


# --- workloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_one_workload_per_source_and_sink(profile: str) -> None:
    docs = rendered(profile)
    topo = parse_topology(yaml.safe_dump(topology_values(profile)))
    for src in topo.sources:
        dep = one(docs, "Deployment", f"rel-clinstream-source-{src.name}")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:4] == ["run", "source", "--source", src.name]
    sinks = [d for d in topo.destinations if d.sink]
    for dest in sinks:
        dep = one(docs, "Deployment", f"rel-clinstream-sink-{dest.name}")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:4] == ["run", "sink", "--destination", dest.name]
    assert len(kinds(docs, "Deployment")) == len(topo.sources) + len(sinks)


@pytest.mark.parametrize(("profile", "replicas"), [("default", 1), ("production", 3)])
def test_worker_statefulset_keeps_state_on_a_pvc(profile: str, replicas: int) -> None:
    sts = one(rendered(profile), "StatefulSet", "rel-clinstream-worker")
    spec = sts["spec"]
    assert spec["replicas"] == replicas
    assert spec["serviceName"] == "rel-clinstream-worker"
    one(rendered(profile), "Service", "rel-clinstream-worker")
    claims = {c["metadata"]["name"]: c for c in spec["volumeClaimTemplates"]}
    assert claims["data"]["spec"]["resources"]["requests"]["storage"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["run", "worker"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == container["workingDir"] == "/var/lib/clinstream"
    assert not any(v["name"] == "data" for v in spec["template"]["spec"]["volumes"])
    if profile != "default":  # production-like
        assert claims["data"]["spec"]["storageClassName"] == "fast-ssd"


@pytest.mark.parametrize("profile", ["default", "production"])
def test_one_worker_statefulset_runs_every_stage(profile: str) -> None:
    assert [d["metadata"]["name"] for d in kinds(rendered(profile), "StatefulSet")] == ["rel-clinstream-worker"]
    args = one(rendered(profile), "StatefulSet", "rel-clinstream-worker")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[-2:] == ["--role", "all"]


def test_route_workers_run_beside_identify_workers() -> None:
    from clinstream.cli import build_parser

    docs = rendered("split")
    workers = one(docs, "StatefulSet", "rel-clinstream-worker")["spec"]
    route = one(docs, "StatefulSet", "rel-clinstream-route-worker")["spec"]
    assert (workers["replicas"], route["replicas"]) == (3, 2)
    assert route["serviceName"] == "rel-clinstream-route-worker"
    one(docs, "Service", "rel-clinstream-route-worker")
    one(docs, "PodDisruptionBudget", "rel-clinstream-route-worker")
    assert route["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    parser = build_parser()
    parsed = {name: parser.parse_args(spec["template"]["spec"]["containers"][0]["args"])
              for name, spec in (("worker", workers), ("route", route))}
    assert (parsed["worker"].role, parsed["route"].role) == ("identify", "route")
    assert parsed["worker"].app_id == parsed["route"].app_id  # the route group is derived from it
    # the two StatefulSets select only their own pods
    assert not matches(route["selector"]["matchLabels"], workers["template"]["metadata"]["labels"])
    assert not matches(workers["selector"]["matchLabels"], route["template"]["metadata"]["labels"])
    limits = route["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "1Gi"}  # worker.route.resources, not the workers'


@pytest.mark.parametrize("profile", PROFILES)
def test_probes_on_the_metrics_port(profile: str) -> None:
    for d in workloads(rendered(profile)):
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, d["metadata"]["name"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, d["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == int(env_of(c)["CLINSTREAM_OPS_PORT"]) == 9108


@pytest.mark.parametrize("profile", PROFILES)
def test_resources_set_everywhere(profile: str) -> None:
    for where, spec in pod_specs(rendered(profile)):
        for c in spec["containers"]:
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), f"{where} {part}"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_privileged_or_root_containers(profile: str) -> None:
    for where, spec in pod_specs(rendered(profile)):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["privileged"] is False, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where


def test_image_defaults_to_app_version_and_is_configurable() -> None:
    app_version = _chart().metadata["appVersion"]
    for _, spec in pod_specs(rendered("default")):
        assert spec["containers"][0]["image"] == f"clinstream:{app_version}"
    docs = render({"image": {"repository": "reg.example/clinstream", "tag": "1.2.3"}})
    assert {spec["containers"][0]["image"] for _, spec in pod_specs(tuple(docs))} == {"reg.example/clinstream:1.2.3"}
    for _, spec in pod_specs(rendered("production")):
        assert spec["containers"][0]["image"] == f"registry.example.org/integration/clinstream:{app_version}"


# --- services and listeners ---------------------------------------------------------------


@pytest.mark.parametrize(("profile", "expected"), [
    ("default", {"adt-feed": ("mllp", 2575)}),
    ("production", {"adt-feed": ("mllp", 2575), "lab-results": ("http", 8443)}),
])
def test_listener_services(profile: str, expected: dict[str, tuple[str, int]]) -> None:
    docs = rendered(profile)
    for source, (port_name, port) in expected.items():
        svc = one(docs, "Service", f"rel-clinstream-source-{source}")
        assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [(port_name, port)]
        dep = one(docs, "Deployment", f"rel-clinstream-source-{source}")
        assert matches(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
        container = dep["spec"]["template"]["spec"]["containers"][0]
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container_ports[port_name] == port
    if profile != "default":  # production-like
        assert one(docs, "Service", "rel-clinstream-source-adt-feed")["spec"]["type"] == "LoadBalancer"


def test_dev_port_zero_gets_the_standard_port() -> None:
    values = {"topology": {**_chart().values["topology"], "sources": [
        {"name": "adt", "kind": "mllp", "options": {"host": "0.0.0.0", "port": 0}},
        {"name": "portal", "kind": "fhir-http", "format": "fhir"},
        {"name": "drop", "kind": "file", "options": {"directory": "inbox"}},
    ]}}
    docs = tuple(render(values))
    assert one(docs, "Service", "rel-clinstream-source-adt")["spec"]["ports"][0]["port"] == 2575
    assert one(docs, "Service", "rel-clinstream-source-portal")["spec"]["ports"][0]["port"] == 8080
    # A file-drop source listens on nothing: a Deployment, no Service.
    one(docs, "Deployment", "rel-clinstream-source-drop")
    assert not [d for d in kinds(docs, "Service") if d["metadata"]["name"] == "rel-clinstream-source-drop"]


def test_listener_tls_secrets_are_mounted_where_the_topology_points() -> None:
    docs = rendered("production")
    by_name = {s["name"]: s for s in PRODUCTION["topology"]["sources"]}
    for source in ("adt-feed", "lab-results"):
        spec = one(docs, "Deployment", f"rel-clinstream-source-{source}")["spec"]["template"]["spec"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "listener-tls")
        volume = next(v for v in spec["volumes"] if v["name"] == "listener-tls")
        assert volume["secret"]["secretName"] == f"{source}-listener-tls"
        assert mount["readOnly"] is True
        for key in ("tls_cert", "tls_key"):
            assert by_name[source]["options"][key].startswith(mount["mountPath"] + "/")


# --- monitoring -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_service_monitor_scrapes_every_long_running_pod(profile: str) -> None:
    docs = rendered(profile)
    (sm,) = kinds(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["clin"]
    assert [(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] == [("metrics", "/metrics")]
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in kinds(docs, "Service") if matches(selector, s["metadata"]["labels"])]
    assert selected, "ServiceMonitor selects no Service"
    for svc in selected:
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}
    for d in workloads(docs):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(matches(svc["spec"]["selector"], labels) for svc in selected), d["metadata"]["name"]
    if profile != "default":  # production-like
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["endpoints"][0]["interval"] == "15s"


def test_service_monitor_can_be_disabled() -> None:
    assert not kinds(tuple(render({"serviceMonitor": {"enabled": False}})), "ServiceMonitor")


def test_dashboard_configmap_ships_the_dashboard_file() -> None:
    cm = one(rendered("default"), "ConfigMap", "rel-clinstream-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["clinstream.json"])
    assert shipped == json.loads((CHART / "dashboards" / "clinstream.json").read_text())


# --- disruption budgets and hook ---------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_each_workload_has_exactly_one_pdb(profile: str) -> None:
    docs = rendered(profile)
    pdbs = kinds(docs, "PodDisruptionBudget")
    for d in workloads(docs):
        labels = d["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if matches(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, d["metadata"]["name"]
        assert covering[0]["spec"]["maxUnavailable"] == 1
    assert len(pdbs) == len(workloads(docs))


@pytest.mark.parametrize("profile", PROFILES)
def test_topology_apply_hook_runs_before_the_workloads(profile: str) -> None:
    docs = rendered(profile)
    job = one(docs, "Job", "rel-clinstream-topology-apply")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["topology", "apply"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Its inputs are hooks themselves, created first: the release's own objects do not exist yet.
    cm = one(docs, "ConfigMap", "rel-clinstream-topology-apply")
    assert cm["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    secret_refs = [e["secretRef"]["name"] for e in container["envFrom"]]
    if profile == "default":
        secret = one(docs, "Secret", secret_refs[0])
        assert secret["metadata"]["annotations"]["helm.sh/hook"] == annotations["helm.sh/hook"]
    else:
        assert secret_refs == ["clinstream-kafka-worker", "clinstream-kafka-admin"]


def test_hook_can_be_disabled() -> None:
    assert not kinds(tuple(render({"topologyJob": {"enabled": False}})), "Job")


def test_checksum_rolls_pods_when_topology_changes() -> None:
    base = one(rendered("default"), "StatefulSet", "rel-clinstream-worker")
    topo = copy.deepcopy(_chart().values["topology"])
    topo["topic_defaults"]["partitions"] = 8
    changed = one(tuple(render({"topology": topo})), "StatefulSet", "rel-clinstream-worker")
    key = "checksum/topology"
    assert base["spec"]["template"]["metadata"]["annotations"][key] != changed["spec"]["template"]["metadata"][
        "annotations"
    ][key]


# --- Kafka settings and secrets -----------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_kafka_env_matches_kafka_settings(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(profile)
    fields = set(KafkaSettings.model_fields)
    secret_keys = {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    for where, spec in pod_specs(docs):
        env = env_of(spec["containers"][0])
        kafka_env = {k: v for k, v in env.items() if k.startswith("KAFKA_")}
        assert {k.removeprefix("KAFKA_").lower() for k in kafka_env} <= fields, where
        for k in [k for k in os.environ if k.startswith("KAFKA_")]:
            monkeypatch.delenv(k)
        for k, v in kafka_env.items():
            monkeypatch.setenv(k, v)
        if profile != "default":  # production-like
            # What the per-component Secrets provide at run time.
            for k in secret_keys:
                monkeypatch.setenv(k, "from-secret")
        settings = KafkaSettings()
        conf = settings.librdkafka()
        assert conf["bootstrap.servers"] == kafka_env["KAFKA_BOOTSTRAP_SERVERS"]
        if profile != "default":  # production-like
            assert conf["security.protocol"] == "sasl_ssl"
            assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
            assert conf["ssl.ca.location"] == "/etc/clinstream/kafka-tls/ca.crt"
            assert any(v["name"] == "kafka-tls" for v in spec["volumes"]), where


def test_component_secrets_override_the_shared_one() -> None:
    docs = rendered("production")
    spec = one(docs, "Deployment", "rel-clinstream-sink-ehr-replica")["spec"]["template"]["spec"]
    refs = [e["secretRef"]["name"] for e in spec["containers"][0]["envFrom"]]
    # envFrom: later sources win, so the component's own principal comes after the shared one.
    assert refs == ["clinstream-kafka-worker", "clinstream-kafka-sink-ehr-replica", "ehr-replica-postgres"]
    assert env_of(spec["containers"][0])["KAFKA_CLIENT_ID"] == "clinstream-sink-ehr-replica"
    # Only the worker (route stage) sees the pseudonym keys.
    assert "clinstream-pseudonym-keys" not in refs
    worker = one(docs, "StatefulSet", "rel-clinstream-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "clinstream-pseudonym-keys" in [e["secretRef"]["name"] for e in worker["envFrom"]]
    # existingSecret: the chart creates no Secrets of its own.
    assert not kinds(docs, "Secret")


def test_inline_credentials_go_to_a_secret_not_env() -> None:
    values = {
        "kafka": {
            "securityProtocol": "SASL_PLAINTEXT",
            "sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"},
        },
        "pseudonymKeys": {"values": {"PSEUDONYM_KEY_RESEARCH": "k" * 32}},
    }
    docs = tuple(render(values))
    secret = one(docs, "Secret", "rel-clinstream-kafka")
    assert secret["stringData"] == {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"}
    assert one(docs, "Secret", "rel-clinstream-pseudonym-keys")["stringData"] == {"PSEUDONYM_KEY_RESEARCH": "k" * 32}
    for _, spec in pod_specs(docs):
        env = env_of(spec["containers"][0])
        assert "KAFKA_SASL_PASSWORD" not in env and "p" not in env.values()


@pytest.mark.parametrize(("values", "message"), [
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "KAFKA_SASL_MECHANISM"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-256"}}}, "kafka.sasl.username"),
    ({"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}}, "not SASL_PLAINTEXT"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "OAUTHBEARER"}}}, "tokenEndpointUrl"),
    ({"kafka": {"tls": {"mutual": True}}}, "kafka.tls.secretName"),
    ({"pseudonymKeys": {"existingSecret": ""}, "topology": PRODUCTION["topology"]}, "PSEUDONYM_KEY_RESEARCH"),
    ({"topology": {"name": "t", "sources": [{"name": "a", "kind": "mllp", "options": {"host": "127.0.0.1"}}]}},
     "loopback"),
])
def test_invalid_values_fail_with_the_key(values: Obj, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


# --- agreement with the processes the chart runs ---------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_worker_app_id_matches_the_acls(profile: str) -> None:
    from topology.acl import DEFAULT_APP_ID

    args = one(rendered(profile), "StatefulSet", "rel-clinstream-worker")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert args[args.index("--app-id") + 1] == DEFAULT_APP_ID
    assert args[args.index("--data-dir") + 1].startswith("/var/lib/clinstream/")


@pytest.mark.parametrize("profile", PROFILES)
def test_mllp_source_options_are_valid_listener_options(profile: str) -> None:
    from connectors.sources.mllp.listener import MllpOptions

    for src in topology_values(profile)["sources"]:
        if src["kind"] == "mllp":
            opts = MllpOptions.model_validate(src.get("options", {}))
            assert opts.host == "0.0.0.0"


def test_cli_parses_the_rendered_commands() -> None:
    from clinstream.cli import build_parser

    parser = build_parser()
    for _, spec in pod_specs(rendered("production")):
        args = parser.parse_args(spec["containers"][0]["args"])
        assert args.topology == "/etc/clinstream/topology.yaml"


@pytest.mark.parametrize(("values", "where"), [
    ({"worker": {"replicas": "three"}}, "/worker/replicas"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "/kafka/sasl/mechanism"),
    ({"sources": {"overrides": {"adt-feed": {"service": {"type": "Ingress"}}}}}, "/sources/overrides/adt-feed"),
    ({"topology": {"name": "t", "sources": [{"name": "Bad Name", "kind": "mllp"}]}}, "/topology/sources/0/name"),
    ({"topology": {"name": "t", "sources": [{"name": "x", "kind": "ftp"}]}}, "/topology/sources/0/kind"),
    ({"worker": {"state": {"maxWriteBuffers": 1}}}, "/worker/state/maxWriteBuffers"),
    ({"worker": {"batch": {"sizes": 10}}}, "/worker/batch"),
    ({"gc": {"freeze": "yes"}}, "/gc/freeze"),
])
def test_values_schema_rejects_wrong_types(values: Obj, where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        render(values)


@pytest.mark.parametrize("profile", PROFILES)
def test_values_schema_accepts_the_shipped_values(profile: str) -> None:
    values = profile_values(profile)
    _chart().validate_schema(_chart().merge_values(values))


# --- process tuning: one named value per setting of the processes ---------------------------


def _tuning_groups() -> list[tuple[tuple[str, ...], type[Any], str]]:
    from streams.app import AgentBatchSettings
    from streams.state import StateStoreSettings
    from topology.runtime import GcSettings, MallocSettings

    return [(("worker", "batch"), AgentBatchSettings, "CLINSTREAM_BATCH_"),
            (("worker", "state"), StateStoreSettings, "CLINSTREAM_STATE_"),
            (("gc",), GcSettings, "CLINSTREAM_GC_"),
            (("malloc",), MallocSettings, "CLINSTREAM_MALLOC_")]


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)


def _at(tree: Obj, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _bounds(model: type[Any], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for rule in model.model_fields[field].metadata:
        if getattr(rule, "ge", None) is not None:
            out["minimum"] = rule.ge
        if getattr(rule, "le", None) is not None:
            out["maximum"] = rule.le
    return out


def test_tuning_values_name_every_setting_with_its_default_and_bounds() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, model, prefix in _tuning_groups():
        values = _at(_chart().values, path)
        where = ".".join(path)
        assert {_snake(k) for k in values} == set(model.model_fields), f"{where} vs {model.__name__}"
        node = schema
        for key in path:
            node = node["properties"][key]
        for key, value in values.items():
            field = _snake(key)
            assert value == model.model_fields[field].default, f"{where}.{key}: chart default vs {prefix}"
            declared = {k: v for k, v in node["properties"][key].items() if k in ("minimum", "maximum")}
            assert declared == _bounds(model, field), f"{where}.{key}: schema bounds vs {model.__name__}"


@pytest.mark.parametrize("profile", PROFILES)
def test_tuning_values_reach_the_processes(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    values = profile_values(profile)
    values = _chart().merge_values(values)
    values["worker"]["batch"] = {"size": 250, "withinMs": 15, "idleMs": 3, "inboxRecords": 750}
    values["worker"]["state"] = {"writeBufferMb": 32, "maxWriteBuffers": 3, "blockCacheMb": 64,
                                 "indexCacheEntries": 5_000_000}
    values["gc"] = {"gen0": 10_000_000, "gen1": 7, "gen2": 9, "freeze": False}
    values["malloc"] = {"arenaMax": 5}
    docs = render(values)
    for where, spec in pod_specs(tuple(docs)):
        env = env_of(spec["containers"][0])
        is_worker = where.startswith("StatefulSet/")
        for path, model, prefix in _tuning_groups():
            named = {k: v for k, v in env.items() if k.startswith(prefix)}
            if path[0] == "worker" and not is_worker:
                assert named == {}, where
                continue
            for k in [k for k in os.environ if k.startswith(prefix)]:
                monkeypatch.delenv(k)
            for k, v in named.items():
                monkeypatch.setenv(k, v)
            loaded = model()
            expected = {_snake(k): v for k, v in _at(values, path).items()}
            assert loaded.model_dump() == expected, f"{where}: {prefix}"


def test_worker_extra_env_overrides_a_tuning_value() -> None:
    values = {"worker": {"extraEnv": [{"name": "CLINSTREAM_BATCH_SIZE", "value": "64"}]}}
    docs = tuple(render(values))
    container = one(docs, "StatefulSet", "rel-clinstream-worker")["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert names.count("CLINSTREAM_BATCH_SIZE") == 2
    assert env_of(container)["CLINSTREAM_BATCH_SIZE"] == "64"  # the later entry: what Kubernetes applies
