"""deploy/: the fleet on Kubernetes, checked offline: every object against Kubernetes 1.30's own
schemas (vendored in tests/schemas, strict: an unknown field is an error), and the manifests
against each other and the service (probes on routes that exist, the router on the API's
Service, the autoscaler on a metric the service exports). Each check is shown to fail when the
manifests are broken."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "schemas"
KINDS = {
    ("apps/v1", "Deployment"): "k8s-v1.30-deployment-apps-v1.json",
    ("v1", "Service"): "k8s-v1.30-service-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "k8s-v1.30-hpa-autoscaling-v2.json",
}


def _objects() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((DEPLOY / name).read_text())]


@functools.cache
def _validator(schema_file: str):
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    definitions = json.loads((SCHEMAS / "k8s-v1.30-definitions.json").read_text())
    resource = Resource.from_contents(definitions, default_specification=DRAFT202012)
    registry = Registry().with_resource("/api/_definitions.json", resource)
    schema = json.loads((SCHEMAS / schema_file).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _by(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _routes() -> set[str]:
    from service import paths

    return set(paths.ROUTES)


def _metrics() -> set[str]:
    from service.metrics import METRICS

    return {m.name for m in METRICS.registry.collect()}


def problems(objects: list[dict]) -> list[str]:
    """Everything `kubectl apply` (schemas) and the fleet (how the pieces meet) would refuse."""
    found = []
    for obj in objects:
        schema = KINDS.get((obj.get("apiVersion"), obj.get("kind")))
        if schema is None:
            found.append(f"{obj.get('kind')}: no schema for {obj.get('apiVersion')}")
            continue
        for error in _validator(schema).iter_errors(obj):
            where = "/".join(map(str, error.absolute_path))
            found.append(f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {error.message}")
    if found:
        return found
    api = _by(objects, "Deployment", "avchat-api")
    pod = api["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        got = container.get(probe, {}).get("httpGet", {}).get("path")
        if got != path or got not in _routes():
            found.append(f"api: {probe} should GET {path}, not {got}")
    if str(container["resources"].get("limits", {}).get("nvidia.com/gpu")) != "1":
        found.append("api: each replica needs one GPU (limits nvidia.com/gpu: 1)")
    if pod.get("terminationGracePeriodSeconds", 30) <= 10:
        found.append("api: the grace period must outlast the service's 10 s stop")
    env = {e["name"]: e for e in container["env"]}
    redis = _by(objects, "Service", "avchat-redis")
    store = f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    if env.get("AVCHAT_FEATURE_STORE", {}).get("value") != store:
        found.append(f"api: AVCHAT_FEATURE_STORE should be {store}")
    if "secretKeyRef" not in env.get("AVCHAT_SECRET", {}).get("valueFrom", {}):
        found.append("api: AVCHAT_SECRET comes from a Secret")
    headless = _by(objects, "Service", "avchat-api")
    if (
        headless["spec"].get("clusterIP") != "None"
        or headless["spec"]["selector"] != api["spec"]["selector"]["matchLabels"]
    ):
        found.append("api: its Service must be headless and select its pods")
    router = _by(objects, "Deployment", "avchat-router")["spec"]["template"]["spec"]
    renv = {e["name"]: e.get("value") for e in router["containers"][0]["env"]}
    dns = f"{headless['metadata']['name']}.default.svc.cluster.local:{headless['spec']['ports'][0]['port']}"
    if renv.get("AVCHAT_REPLICAS_DNS") != dns:
        found.append(f"router: AVCHAT_REPLICAS_DNS should be {dns}")
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    generated = {g["name"]: [os.path.basename(f) for f in g["files"]] for g in kustomization["configMapGenerator"]}
    for volume in router["volumes"]:
        name = volume.get("configMap", {}).get("name")
        mounts = [m for m in router["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        if name not in generated or sorted(m["subPath"] for m in mounts) != sorted(generated[name]):
            found.append(f"router: mounts {[m.get('subPath') for m in mounts]} of {name}, not what is generated")
    hpa = _by(objects, "HorizontalPodAutoscaler", "avchat-api")
    if hpa["spec"]["scaleTargetRef"]["name"] != api["metadata"]["name"]:
        found.append("hpa: scales something other than the API")
    for metric in hpa["spec"]["metrics"]:
        if metric["pods"]["metric"]["name"] not in _metrics():
            found.append(f"hpa: the service exports no metric {metric['pods']['metric']['name']}")
    return found


def test_the_kubernetes_manifests_are_valid_and_fit_together():
    objects = _objects()
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} >= {
        ("Deployment", "avchat-api"),
        ("Service", "avchat-api"),
        ("Deployment", "avchat-redis"),
        ("Service", "avchat-redis"),
        ("Deployment", "avchat-router"),
        ("Service", "avchat"),
        ("HorizontalPodAutoscaler", "avchat-api"),
    }
    assert problems(objects) == []
    for files in yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["configMapGenerator"]:
        assert all((DEPLOY / f).is_file() for f in files["files"])


def _api(objects):
    return _by(objects, "Deployment", "avchat-api")["spec"]["template"]["spec"]


BREAKS = {
    "replicas-not-a-number": (lambda o: _by(o, "Deployment", "avchat-api")["spec"].update(replicas="two"), "replicas"),
    "misspelt-field": (lambda o: _api(o)["containers"][0].update(resource={}), "resource"),
    "probe-on-a-missing-route": (
        lambda o: _api(o)["containers"][0]["readinessProbe"]["httpGet"].update(path="/readyz"),
        "readinessProbe",
    ),
    "no-gpu": (lambda o: _api(o)["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"), "GPU"),
    "store-elsewhere": (
        lambda o: _api(o)["containers"][0]["env"][4].update(value="redis://redis:6379/0"),
        "AVCHAT_FEATURE_STORE",
    ),
    "hpa-on-an-unknown-metric": (
        lambda o: _by(o, "HorizontalPodAutoscaler", "avchat-api")["spec"]["metrics"][0]["pods"]["metric"].update(
            name="queue_length"
        ),
        "no metric",
    ),
    "hpa-target-missing-kind": (
        lambda o: _by(o, "HorizontalPodAutoscaler", "avchat-api")["spec"]["scaleTargetRef"].pop("kind"),
        "kind",
    ),
    "router-on-another-service": (
        lambda o: _by(o, "Deployment", "avchat-router")["spec"]["template"]["spec"]["containers"][0]["env"][2].update(
            value="api:8000"
        ),
        "AVCHAT_REPLICAS_DNS",
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_the_checks_catch_a_broken_manifest(name):
    objects = copy.deepcopy(_objects())
    breaker, complaint = BREAKS[name]
    breaker(objects)
    found = problems(objects)
    assert found and any(complaint in p for p in found), found


def test_the_router_finds_its_replicas_through_dns_in_kubernetes():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.skip("needs Debian's haproxy (scripts/system-deps.sh installs it)")
    router = _by(_objects(), "Deployment", "avchat-router")["spec"]["template"]["spec"]["containers"][0]
    env = {**{e["name"]: e["value"] for e in router["env"]}, "AVCHAT_HAPROXY_DIR": str(DEPLOY / "haproxy")}
    out = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
