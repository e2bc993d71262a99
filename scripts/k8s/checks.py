#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests, the Dockerfiles and skaffold.yaml.

Run through scripts/check-k8s, which provides the tools (a venv from
scripts/k8s/requirements.txt) and the topology. Every check takes the root of a
checkout, so the self-test (test_checks.py) can run it on a deliberately broken copy.

    checks.py --topology FILE [--root DIR] [--only NAME ...]

The topology is the one place the services are written down: each service's name,
Deployment, image, Service, port, database, whether it consumes events and the env vars
its binary reads, the client's Deployment, image, Service and port, and the table of
public routes. It is declared in the Rust code and printed by `devstack topology
--json`; scripts/check-k8s runs that (or takes the file named by MICROBLOG_TOPOLOGY) and
passes the JSON here as FILE. Nothing in this file repeats it: the manifests, the
Dockerfiles and skaffold.yaml are checked against it.

Checks, each failing the run on a real mistake:
  schema     every manifest against the Kubernetes OpenAPI schema, strict (unknown
             fields and wrong types rejected; a kind without a schema is a failure)
  refs       what no schema sees: selectors, Ingress backends and the topology's
             routes, images vs skaffold artifacts and Dockerfile stages, Secret/ConfigMap
             keys, the env vars the Rust code reads vs the topology vs each Deployment,
             DATABASE_URL vs its database, service URLs, probe and policy ports,
             NetworkPolicy selectors, labels, the Docker build context; and the
             topology vs the manifests (Deployments, images, ports, Services,
             databases, the bus's subscribers), the code (which services consume
             events) and the Dockerfiles (one stage per service, the services built)
  checkov    policy scan of manifests, overlay renderings and Dockerfiles; accepted
             findings only from infra/checks/checkov-skips.yaml, each with its reason
  hadolint   every Dockerfile, failure threshold warning, ignores only in .hadolint.yaml
  skaffold   skaffold.yaml against the skaffold/v4beta14 JSON schema
  overlays   every overlay renders; each rendering passes the strict schema (Gateway
             API objects against the vendored CRD schemas, gateway_api.py), the
             resource cross-references of refs and the front-door checks; prod's and
             gateway's own rules
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

import gateway_api

HERE = Path(__file__).resolve().parent

# Kubernetes versions the manifests must be valid for: the oldest we support (the
# preStop sleep action is beta and on by default from 1.30) and the newest the
# validator knows.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

MANIFEST_DIR = "infra/k8s"
SKAFFOLD_FILE = "skaffold.yaml"
SKAFFOLD_SCHEMA = HERE / "schemas" / "skaffold-v4beta14.json"
CHECKOV_SKIPS = "infra/checks/checkov-skips.yaml"
HADOLINT_CONFIG = ".hadolint.yaml"

ROOT_DOCKERFILE = "Dockerfile"  # every Rust service's image, one stage per service

# A variable the code reads with a default may be left out of its Deployment only if
# it is listed here, per service, with the reason. Everything else must be set.
OPTIONAL_UNSET: dict[str, dict[str, str]] = {
    # e.g. "query": {"RUST_LOG": "the built-in filter is what we want in the cluster"},
}
# The same, for every service.
OPTIONAL_UNSET_EVERYWHERE: dict[str, str] = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "traces are off by default; set it to an OTLP/HTTP collector to export spans (docs/operations.md)",
}
# Which variables each binary reads is the topology's `env`; the refs check greps the
# sources too (the patterns below), so a variable added to the code but not to the
# topology, or to the topology but not to the Deployment, fails. The sources of a binary
# are its own crate's (<service>/src) and those of the crates every service links:
SHARED_SOURCES = ["contract/src", "service-kit/src"]
# Nothing in them is left out: test support (testkit/) and the PostgreSQL launcher of
# the tests, the load tool and the local runner (harness/) are crates no service links.
EXCLUDED_SOURCES: list[str] = []

# How the code reads a variable: service-kit's config::Env accessors with a literal or a
# `const NAME: &str = "…"`, std::env::var, and tracing's EnvFilter (RUST_LOG).
ENV_ACCESSOR = re.compile(
    r"\.(?:required|optional|parsed_or|url)\(\s*(?:\"(?P<lit>[A-Z][A-Z0-9_]*)\"|(?P<ident>[A-Z][A-Z0-9_]*))\s*[,)]"
)
ENV_STD = re.compile(r"env::var(?:_os)?\(\s*\"(?P<lit>[A-Z][A-Z0-9_]*)\"\s*\)")
ENV_CONST = re.compile(
    r"const\s+(?P<ident>[A-Z][A-Z0-9_]*)\s*:\s*&(?:'static\s+)?str\s*=\s*\"(?P<value>[A-Z][A-Z0-9_]*)\"\s*;"
)
ENV_FILTER_DEFAULT = re.compile(r"EnvFilter::(?:try_)?from_default_env\s*\(")

# The Ingress's contract (course-compatible; the local gateway applies the same file).
# What must route where is the topology's `routes`.
INGRESS_FILE = "ingress-srv.yaml"
INGRESS_ALLOWED_ANNOTATIONS = {"nginx.ingress.kubernetes.io/use-regex": "true"}
# Rate limits the local gateway enforces too (devstack/src/ratelimit.rs): positive whole
# numbers, as strings.
INGRESS_LIMIT_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/limit-rps",
    "nginx.ingress.kubernetes.io/limit-burst-multiplier",
    "nginx.ingress.kubernetes.io/limit-connections",
}

REQUIRED_LABELS = ["app", "app.kubernetes.io/name", "app.kubernetes.io/component"]
PART_OF = ("app.kubernetes.io/part-of", "microblog")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


@dataclass
class Resource:
    doc: dict
    file: str  # relative to the root

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "")

    @property
    def namespace(self) -> str:
        return (self.doc.get("metadata") or {}).get("namespace") or "default"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.file})"


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(message)


# ---------------------------------------------------------------------------------- topology
TOPOLOGY_SOURCE = "devstack topology --json"
TOPOLOGY_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")  # a crate directory, a DNS label


class TopologyError(Exception):
    """The topology file is unreadable or not in the format of `devstack topology --json`."""


@dataclass(frozen=True)
class Workload:
    """What runs in one Deployment, per the topology: a Rust service or the client."""

    name: str
    k8s_service: str
    deployment: str
    image: str
    port: int


@dataclass(frozen=True)
class ServiceSpec(Workload):
    database: str
    consumes_events: bool
    env: frozenset[str]


@dataclass(frozen=True)
class Topology:
    services: dict[str, ServiceSpec]  # by name, in the topology's order
    client: Workload
    routes: list[tuple[str, str]]  # (request path, Service that must answer it)

    def workloads(self) -> list[Workload]:
        return [*self.services.values(), self.client]

    def consumers(self) -> set[str]:
        return {name for name, s in self.services.items() if s.consumes_events}

    def bus(self) -> ServiceSpec | None:
        """The service that delivers events: the one that reads EVENT_BUS_SUBSCRIBERS."""
        buses = [s for s in self.services.values() if "EVENT_BUS_SUBSCRIBERS" in s.env]
        return buses[0] if len(buses) == 1 else None


def load_topology(path: Path) -> Topology:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TopologyError(f"cannot read it: {exc}") from exc

    def need(obj, key: str, kind: str, where: str):
        if not isinstance(obj, dict) or key not in obj:
            raise TopologyError(f"{where}: {key!r} missing")
        value = obj[key]
        if kind == "name":
            ok = isinstance(value, str) and TOPOLOGY_NAME.fullmatch(value) is not None
        elif kind == "str":
            ok = isinstance(value, str) and value != ""
        elif kind == "port":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "names":
            ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        elif kind == "object":
            ok = isinstance(value, dict)
        else:
            ok = isinstance(value, list)
        if not ok:
            raise TopologyError(f"{where}: {key!r} is not a valid {kind}: {value!r}")
        return value

    def workload(obj, where: str) -> dict:
        return {
            "name": need(obj, "name", "name", where),
            "k8s_service": need(obj, "k8sService", "name", where),
            "deployment": need(obj, "deployment", "name", where),
            "image": need(obj, "image", "str", where),
            "port": need(obj, "port", "port", where),
        }

    services: dict[str, ServiceSpec] = {}
    for i, obj in enumerate(need(data, "services", "list", "the topology")):
        where = f"services[{i}]"
        env = need(obj, "env", "names", where)
        spec = ServiceSpec(
            **workload(obj, where),
            database=need(obj, "database", "str", where),
            consumes_events=need(obj, "consumesEvents", "bool", where),
            env=frozenset(env),
        )
        if len(set(env)) != len(env):
            raise TopologyError(f"{where} ({spec.name}): env lists a variable twice")
        if spec.name in services:
            raise TopologyError(f"{where}: service {spec.name} is listed twice")
        services[spec.name] = spec
    if not services:
        raise TopologyError("no services")
    client = Workload(**workload(need(data, "client", "object", "the topology"), "client"))
    workloads = [*services.values(), client]
    for attr, what in (("k8s_service", "Service"), ("deployment", "Deployment"), ("image", "image"), ("port", "port")):
        seen: dict[object, str] = {}
        for w in workloads:
            value = getattr(w, attr)
            if value in seen:
                raise TopologyError(f"{w.name} and {seen[value]} have the same {what} {value}")
            seen[value] = w.name
    names = {w.k8s_service for w in workloads}
    routes = []
    for i, obj in enumerate(need(data, "routes", "list", "the topology")):
        route = (need(obj, "path", "str", f"routes[{i}]"), need(obj, "service", "name", f"routes[{i}]"))
        if not route[0].startswith("/"):
            raise TopologyError(f"routes[{i}]: the path {route[0]!r} does not start with /")
        if route[1] not in names:
            raise TopologyError(f"routes[{i}]: {route[0]} goes to {route[1]}, which is no Service of the topology")
        routes.append(route)
    if not routes:
        raise TopologyError("no routes")
    return Topology(services, client, routes)


KUSTOMIZATION = "kustomization.yaml"
OVERLAYS_DIR = "infra/overlays"
DEV_OVERLAY = f"{OVERLAYS_DIR}/dev"
PROD_OVERLAY = f"{OVERLAYS_DIR}/prod"
RESTORE_JOB = f"{PROD_OVERLAY}/event-bus-restore.yaml"  # applied by hand (docs/operations.md)
# The namespaces the front doors' proxies run in (docs/kubernetes.md): ingress-nginx's,
# and Envoy Gateway's for the gateway overlay.
INGRESS_NAMESPACE = "ingress-nginx"
GATEWAY_NAMESPACE = "envoy-gateway-system"


def manifest_files(root: Path) -> list[Path]:
    """The manifests (the kustomization that lists them is no manifest)."""
    return sorted(p for p in (root / MANIFEST_DIR).glob("*") if p.is_file() and p.name != KUSTOMIZATION)


def kustomize(root: Path, directory: str) -> list[dict]:
    """What `kubectl kustomize <directory>` renders (kubectl's built-in kustomize, as
    skaffold's kustomize deployer runs it)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not installed: the kustomize check renders with `kubectl kustomize`")
    proc = subprocess.run([kubectl, "kustomize", str(root / directory)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`kubectl kustomize {directory}` failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def load_manifests(root: Path, report: Report) -> list[Resource]:
    resources = []
    files = manifest_files(root)
    if not files:
        report.error(f"no manifests in {MANIFEST_DIR}/")
    for path in files:
        rel = str(path.relative_to(root))
        if path.suffix not in (".yaml", ".yml"):
            report.error(f"{rel}: not a .yaml file, but every file in {MANIFEST_DIR}/ is a manifest that {KUSTOMIZATION} lists")
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            report.error(f"{rel}: YAML does not parse: {exc}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion"):
                report.error(f"{rel}: a document without apiVersion/kind")
                continue
            resources.append(Resource(doc, rel))
    return resources


def pod_template(res: Resource) -> dict | None:
    """The pod a workload runs, as {metadata, spec}."""
    spec = res.doc.get("spec") or {}
    if res.kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    if res.kind in WORKLOAD_KINDS:
        return spec.get("template")
    if res.kind == "Pod":
        return res.doc
    return None


def pod_spec(res: Resource) -> dict | None:
    return (pod_template(res) or {}).get("spec")


def pod_labels(res: Resource) -> dict:
    return ((pod_template(res) or {}).get("metadata") or {}).get("labels") or {}


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---------------------------------------------------------------------------------- schema
def check_schema(root: Path, _topology: Topology, report: Report) -> None:
    for res in load_manifests(root, report):
        validate_strictly(res.doc, str(res), report)


def validate_strictly(doc: dict, where: str, report: Report) -> None:
    """A manifest against the Kubernetes schema of every version checked, strictly."""
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top level)"
            report.error(f"{where}: invalid for Kubernetes {version} at {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            # kubernetes-validate only warns here; an unknown kind or apiVersion is
            # a mistake for us (a typo, or an API removed from Kubernetes).
            report.error(f"{where}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - report any validator failure as ours
            report.error(f"{where}: could not be validated for {version}: {exc}")


# ---------------------------------------------------------------------------------- skaffold
def load_skaffold(root: Path, report: Report) -> dict | None:
    path = root / SKAFFOLD_FILE
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        report.error(f"{SKAFFOLD_FILE}: {exc}")
        return None
    if not isinstance(config, dict):
        report.error(f"{SKAFFOLD_FILE}: not a mapping")
        return None
    return config


def check_skaffold(root: Path, _topology: Topology, report: Report) -> None:
    config = load_skaffold(root, report)
    if config is None:
        return
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    if config.get("apiVersion") != "skaffold/v4beta14":
        report.error(f"{SKAFFOLD_FILE}: apiVersion must be skaffold/v4beta14 (the schema checked here)")
    for err in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        # The schema nests objects in anyOf; the most specific reason is in the context.
        detail = err
        while detail.context:
            detail = max(detail.context, key=lambda e: len(e.absolute_path))
        where = "/".join(str(p) for p in detail.absolute_path) or "(top level)"
        report.error(f"{SKAFFOLD_FILE}: at {where}: {detail.message}")


# ---------------------------------------------------------------------------------- overlays
def overlay_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / OVERLAYS_DIR).iterdir() if (p / KUSTOMIZATION).is_file())


def check_overlays(root: Path, topology: Topology, report: Report) -> None:
    """Every overlay renders; each rendering is valid for Kubernetes in strict mode (its
    Gateway API objects against the vendored CRD schemas) and passes the resource
    cross-references; skaffold has a profile for each overlay but dev (its default).
    prod deploys no Secret (each one a pod reads is a base Secret's name, created out of
    band), runs every Deployment at two replicas or more, and labels its namespace for
    the Pod Security restricted profile. gateway routes by HTTPRoutes, not the Ingress."""
    overlays = overlay_names(root)
    if not {"dev", "prod", "gateway"} <= set(overlays):
        report.error(f"{OVERLAYS_DIR}: expected the overlays dev, gateway and prod, found {overlays}")
    skaffold = load_skaffold(root, report) or {}
    profiles = {
        p.get("name"): (((p.get("manifests") or {}).get("kustomize")) or {}).get("paths")
        for p in skaffold.get("profiles") or []
    }
    base_secrets = frozenset(r.name for r in load_manifests(root, Report()) if r.kind == "Secret")
    for name in overlays:
        if name != "dev" and profiles.get(name) != [f"{OVERLAYS_DIR}/{name}"]:
            report.error(f"{SKAFFOLD_FILE}: no profile {name} deploying [{OVERLAYS_DIR}/{name}] (found {profiles.get(name)})")
        try:
            rendered = [Resource(d, f"{OVERLAYS_DIR}/{name} (rendered)") for d in kustomize(root, f"{OVERLAYS_DIR}/{name}")]
        except RuntimeError as exc:
            report.error(f"{OVERLAYS_DIR}/{name}: {exc}")
            continue
        for res in rendered:
            if gateway_api.is_gateway_api(res.doc):
                gateway_api.validate(res.doc, str(res), report.error)
            else:
                validate_strictly(res.doc, str(res), report)
        index = Index(rendered)
        check_resource_refs(index, report, base_secrets if name == "prod" else frozenset())
        check_front_door(index, topology, report)
        if name == "prod":
            check_prod(rendered, base_secrets, report)
        if name == "gateway" and index.by_kind.get("Ingress"):
            report.error(f"{OVERLAYS_DIR}/gateway: renders an Ingress besides its HTTPRoutes: two front doors")
    # Applied by hand, not rendered: checked all the same.
    restore = root / RESTORE_JOB
    for doc in yaml.safe_load_all(restore.read_text()) if restore.is_file() else []:
        validate_strictly(doc, str(Resource(doc, str(restore.relative_to(root)))), report)


def check_front_door(index: Index, topology: Topology, report: Report) -> None:
    """One front door per rendering (an Ingress for ingress-nginx, or HTTPRoutes for the
    Gateway), which sends requests to every Service the topology's routes name, and
    whose controller's namespace, and no other's, each of those services' pods admit."""
    routes = index.by_kind.get("HTTPRoute", [])
    ingresses = index.by_kind.get("Ingress", [])
    if routes:
        door, allowed, refused = "the HTTPRoutes", GATEWAY_NAMESPACE, INGRESS_NAMESPACE
        backends = {b.get("name") for r in routes for rule in (r.doc.get("spec") or {}).get("rules") or [] for b in rule.get("backendRefs") or []}
    else:
        door, allowed, refused = "the Ingress", INGRESS_NAMESPACE, GATEWAY_NAMESPACE
        backends = {((p.get("backend") or {}).get("service") or {}).get("name") for ing in ingresses for p in ingress_paths(ing)}
    where = next((r.file for r in index.resources), OVERLAYS_DIR)
    for service in sorted({svc for _, svc in topology.routes} - backends):
        report.error(f"{where}: no backend of {door} is {service}, which the topology's routes need")
    for service in sorted(backends):
        svc = next((s for s in index.by_kind.get("Service", []) if s.name == service), None)
        selector = ((svc.doc.get("spec") or {}).get("selector") or {}) if svc else {}
        for pods in index.pods_selected({"matchLabels": selector}, svc.namespace) if selector else []:
            admitted = {
                ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                for pol in index.by_kind.get("NetworkPolicy", [])
                if pol.namespace == pods.namespace and selects((pol.doc.get("spec") or {}).get("podSelector") or {}, pod_labels(pods))
                for rule in (pol.doc.get("spec") or {}).get("ingress") or []
                for peer in rule.get("from") or []
            }
            if allowed not in admitted:
                report.error(f"{pods}: serves {service} behind {door}, but no NetworkPolicy admits their proxies' namespace {allowed}")
            if refused in admitted:
                report.error(f"{pods}: a NetworkPolicy admits {refused}, the namespace of no front door of this rendering")


def check_prod(rendered: list[Resource], base_secrets: frozenset[str], report: Report) -> None:
    for res in rendered:
        if res.kind == "Secret":
            report.error(f"{res}: the prod overlay deploys a Secret from git; create it out of band instead")
        if res.kind == "Deployment" and ((res.doc.get("spec") or {}).get("replicas") or 1) < 2:
            report.error(f"{res}: runs fewer than two replicas in prod")
        spec = pod_spec(res) or {}
        for c in containers(spec):
            for env in c.get("env") or []:
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
                if ref and ref not in base_secrets:
                    report.error(f"{res}: reads the Secret {ref}, which the docs' out-of-band commands do not create (no base Secret of that name)")
    # The log is the source of truth: prod backs up the bus's database into a volume it
    # claims.
    claims = {r.name for r in rendered if r.kind == "PersistentVolumeClaim"}
    backups = []
    for job in (r for r in rendered if r.kind == "CronJob"):
        spec = (((job.doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {}
        dumps = any("pg_dump" in " ".join(c.get("command", []) + c.get("args", [])) for c in containers(spec))
        volumes = {((v.get("persistentVolumeClaim") or {}).get("claimName")) for v in spec.get("volumes") or []}
        if dumps and volumes & claims:
            backups.append(job)
    if not backups:
        report.error(f"{PROD_OVERLAY}: no CronJob pg_dumps the bus's database into a volume the overlay claims")
    namespaces = [r for r in rendered if r.kind == "Namespace"]
    labels = ((namespaces[0].doc.get("metadata") or {}).get("labels") or {}) if namespaces else {}
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        report.error(f"{PROD_OVERLAY}: its Namespace does not enforce the Pod Security restricted profile (labels {labels})")
    elsewhere = sorted({r.namespace for r in rendered if r.kind != "Namespace"} - {n.name for n in namespaces})
    if elsewhere:
        report.error(f"{PROD_OVERLAY}: resources in namespaces it does not create: {elsewhere}")


# ---------------------------------------------------------------------------------- refs
@dataclass
class Stage:
    name: str  # lower case; "" when the stage has no AS
    instructions: list[tuple[str, str]]  # (INSTRUCTION, its arguments), FROM first


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    instructions = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        # A comment or an empty line ends no instruction, even inside a continuation.
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        m = re.match(r"(\S+)\s*(.*)", current + stripped, re.DOTALL)
        if m:
            instructions.append((m.group(1).upper(), m.group(2).strip()))
        current = ""
    if current.strip():
        m = re.match(r"(\S+)\s*(.*)", current.strip(), re.DOTALL)
        if m:
            instructions.append((m.group(1).upper(), m.group(2).strip()))
    return instructions


def dockerfile_stage_list(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for instruction, args in dockerfile_instructions(path.read_text()):
        if instruction == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*\S+(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            stages.append(Stage((m.group(1) or "").lower() if m else "", []))
        if stages:
            stages[-1].instructions.append((instruction, args))
    return stages


def dockerfile_stages(path: Path) -> set[str]:
    return {s.name for s in dockerfile_stage_list(path) if s.name}


def exposed_ports(args: str) -> list[str]:
    """EXPOSE's ports without their protocol: `80/tcp 53/udp` -> ["80", "53"]."""
    return [p.split("/", 1)[0] for p in args.split()]


def check_dockerfiles(root: Path, topology: Topology, artifacts: dict, report: Report) -> None:
    """The root Dockerfile against the topology: one stage per service and no other
    service stage, the one cargo build and the loop collecting the binaries name exactly
    the topology's services, and no EXPOSE (the port is the topology's, and Kubernetes
    ignores EXPOSE). The client's image: any EXPOSE, and its nginx's listen, are the
    topology's client port."""
    path = root / ROOT_DOCKERFILE
    if not path.is_file():
        report.error(f"{ROOT_DOCKERFILE} does not exist")
        return
    names = set(topology.services)
    stages = dockerfile_stage_list(path)
    by_name = {s.name: s for s in stages if s.name}

    def instructions(stage: Stage, wanted: str) -> list[str]:
        return [args for instruction, args in stage.instructions if instruction == wanted]

    # A service stage is one that starts something: it has an ENTRYPOINT or CMD of its own.
    service_stages = {s.name for s in stages if instructions(s, "ENTRYPOINT") or instructions(s, "CMD")}
    for name in sorted(names - set(by_name)):
        report.error(f"{ROOT_DOCKERFILE}: no stage {name}, but {name} is a service of the topology ({TOPOLOGY_SOURCE})")
    for name in sorted(names & set(by_name) - service_stages):
        report.error(f"{ROOT_DOCKERFILE}: stage {name} has no ENTRYPOINT, so it is no image of the service {name}")
    for name in sorted(service_stages - names):
        report.error(
            f"{ROOT_DOCKERFILE}: stage {name or '(unnamed)'} is a service image (it has an ENTRYPOINT), "
            f"but the topology has no service {name or '(unnamed)'}: services are {sorted(names)}"
        )
    for name in sorted(names & service_stages):
        for entrypoint in instructions(by_name[name], "ENTRYPOINT"):
            try:
                argv = json.loads(entrypoint)
            except json.JSONDecodeError:
                argv = entrypoint.split()
            binary = argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) else ""
            if binary.rsplit("/", 1)[-1] != name:
                report.error(f"{ROOT_DOCKERFILE}: stage {name}'s ENTRYPOINT {entrypoint} does not run the binary {name}")
    for stage in stages:
        for args in instructions(stage, "EXPOSE"):
            report.error(
                f"{ROOT_DOCKERFILE}: stage {stage.name or '(unnamed)'} has EXPOSE {args}: the root Dockerfile "
                f"declares no ports (a service's port is the topology's; its Deployment sets PORT and "
                f"containerPort, and Kubernetes ignores EXPOSE)"
            )

    runs = [args for s in stages for args in instructions(s, "RUN")]

    def compare(what: str, found: list[str]) -> None:
        listed = set(found)
        if listed != names:
            missing = ", ".join(sorted(names - listed)) or "none"
            extra = ", ".join(sorted(listed - names)) or "none"
            report.error(
                f"{ROOT_DOCKERFILE}: {what} lists {sorted(listed)}, but the topology's services are "
                f"{sorted(names)} (missing: {missing}; not in the topology: {extra})"
            )

    builds = [m.group(1) for run in runs for m in re.finditer(r"\bcargo\s+build\b([^;&|]*)", run)]
    if len(builds) != 1:
        report.error(f"{ROOT_DOCKERFILE}: expected one `cargo build` (of all the service binaries), found {len(builds)}")
    else:
        compare("the `cargo build` (-p ...)", re.findall(r"(?:^|\s)(?:-p|--package)(?:\s+|=)([A-Za-z0-9_-]+)", builds[0]))
    # The cooked dependencies are those of the services alone (with their features), or
    # the build recompiles them and the cook compiled the local runner's for nothing.
    cooks = [m.group(1) for run in runs for m in re.finditer(r"\bcargo\s+chef\s+cook\b([^;&|]*)", run)]
    if len(cooks) != 1:
        report.error(f"{ROOT_DOCKERFILE}: expected one `cargo chef cook` (of the service packages), found {len(cooks)}")
    else:
        compare("the `cargo chef cook` (-p ...)", re.findall(r"(?:^|\s)(?:-p|--package)(?:\s+|=)([A-Za-z0-9_-]+)", cooks[0]))
    check_debian_releases(stages, report)
    loops = [m.group(1) for run in runs for m in re.finditer(r"\bfor\s+bin\s+in\s+([^;]*?)\s*;\s*do\b", run)]
    if len(loops) != 1:
        report.error(f"{ROOT_DOCKERFILE}: expected one `for bin in ...; do` collecting the binaries, found {len(loops)}")
    else:
        compare("the `for bin in` loop", loops[0].split())

    # skaffold builds each service's image from its stage of the root Dockerfile.
    for w in topology.workloads():
        art = artifacts.get(w.image)
        if art is None:
            report.error(f"{SKAFFOLD_FILE}: no artifact builds {w.image}, the image of {w.name} in the topology")
            continue
        docker = art.get("docker") or {}
        if w.name not in topology.services:
            continue
        dockerfile = Path(art.get("context") or ".") / (docker.get("dockerfile") or "Dockerfile")
        if os.path.normpath(dockerfile) != ROOT_DOCKERFILE or docker.get("target") != w.name:
            report.error(
                f"{SKAFFOLD_FILE}: artifact {w.image} builds target {docker.get('target')!r} of {dockerfile}, "
                f"not stage {w.name} of {ROOT_DOCKERFILE}"
            )

    # The client's image, from its artifact: EXPOSE (optional) and nginx's port.
    client = topology.client
    art = artifacts.get(client.image)
    if art is None:
        return
    context = root / (art.get("context") or ".")
    dockerfile = context / ((art.get("docker") or {}).get("dockerfile") or "Dockerfile")
    if dockerfile.is_file():
        for stage in dockerfile_stage_list(dockerfile):
            for args in instructions(stage, "EXPOSE"):
                if exposed_ports(args) != [str(client.port)]:
                    report.error(
                        f"{dockerfile.relative_to(root)}: EXPOSE {args}, but the topology's client port is {client.port}"
                    )
    nginx = context / "nginx.conf"
    if nginx.is_file():
        listens = re.findall(r"^\s*listen\s+([^;\s]+)[^;]*;", nginx.read_text(), re.MULTILINE)
        ports = [listen.rsplit(":", 1)[-1] for listen in listens]
        if not ports or any(p != str(client.port) for p in ports):
            report.error(
                f"{nginx.relative_to(root)}: nginx listens on {ports or 'nothing'}, but the topology's client port is {client.port}"
            )


DEBIAN_RELEASES = {"bookworm": "12", "trixie": "13", "forky": "14"}


def check_debian_releases(stages: list[Stage], report: Report) -> None:
    """The Rust builder and the distroless runtime are one Debian release: the binaries
    link glibc dynamically and must not need a newer one than the runtime has."""
    found = {}
    for stage in stages:
        base = next((args for instruction, args in stage.instructions if instruction == "FROM"), "")
        if m := re.match(r"rust:[^-\s]+-(?:slim-)?([a-z]+)", base):
            found.setdefault("builder", (base, DEBIAN_RELEASES.get(m.group(1))))
        if m := re.search(r"distroless/cc-debian(\d+)", base):
            found.setdefault("runtime", (base, m.group(1)))
    if set(found) != {"builder", "runtime"}:
        report.error(f"{ROOT_DOCKERFILE}: expected a rust:<version>-<debian> builder and a distroless/cc-debian<N> runtime, found {sorted(found)}")
        return
    (builder, built_on), (runtime, runs_on) = found["builder"], found["runtime"]
    if built_on is None or built_on != runs_on:
        report.error(
            f"{ROOT_DOCKERFILE}: the builder {builder} and the runtime {runtime} are not one Debian release "
            f"(a binary built on a newer glibc fails to start on an older one)"
        )


def image_name(image: str) -> tuple[str, bool]:
    """The repository part of an image reference, and whether a tag or digest pins it."""
    ref, pinned = image.split("@", 1)[0], "@" in image
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, pinned = ref[: len(ref) - len(last) + last.index(":")], True
    return ref, pinned


def env_reads_in(path: Path, reads: dict[str, set[str]]) -> None:
    text = path.read_text()
    consts = {m.group("ident"): m.group("value") for m in ENV_CONST.finditer(text)}
    for m in ENV_ACCESSOR.finditer(text):
        name = m.group("lit") or consts.get(m.group("ident") or "")
        if name:
            reads.setdefault(name, set()).add(str(path))
        elif m.group("ident"):
            reads.setdefault(f"<unresolved {m.group('ident')}>", set()).add(str(path))
    for m in ENV_STD.finditer(text):
        reads.setdefault(m.group("lit"), set()).add(str(path))
    if ENV_FILTER_DEFAULT.search(text):
        reads.setdefault("RUST_LOG", set()).add(str(path))


def env_reads(root: Path, source_dirs: list[str]) -> dict[str, set[str]]:
    reads: dict[str, set[str]] = {}
    excluded = [root / e for e in EXCLUDED_SOURCES]
    for rel in source_dirs:
        for path in sorted((root / rel).rglob("*.rs")):
            if path in excluded or any(ex in path.parents for ex in excluded):
                continue
            env_reads_in(path, reads)
    return reads


def rel_paths(root: Path, paths: set[str]) -> str:
    return ", ".join(sorted(str(Path(p).relative_to(root)) for p in paths))


class Index:
    """One set of manifests (the base's files, or one overlay's rendering), looked up
    by kind, name and namespace."""

    def __init__(self, resources: list[Resource]):
        self.resources = resources
        self.by_kind: dict[str, list[Resource]] = {}
        for res in resources:
            self.by_kind.setdefault(res.kind, []).append(res)
        self.workloads = [r for r in resources if pod_spec(r) is not None]

    def find(self, kind: str, name: str, namespace: str = "default") -> Resource | None:
        for res in self.by_kind.get(kind, []):
            if res.name == name and res.namespace == namespace:
                return res
        return None

    def pods_selected(self, selector: dict, namespace: str) -> list[Resource]:
        return [w for w in self.workloads if w.namespace == namespace and selects(selector, pod_labels(w))]

    def service_port(self, name: str, port: int | str, namespace: str = "default") -> bool:
        svc = self.find("Service", name, namespace)
        if svc is None:
            return False
        return any(port in (p.get("port"), p.get("name")) for p in (svc.doc.get("spec") or {}).get("ports") or [])


def container_ports(workload: Resource) -> list[dict]:
    return [p for c in containers(pod_spec(workload) or {}) for p in c.get("ports") or []]


def ingress_paths(ing: Resource) -> list[dict]:
    return [p for rule in (ing.doc.get("spec") or {}).get("rules") or [] for p in ((rule.get("http") or {}).get("paths")) or []]


def check_resource_refs(index: Index, report: Report, absent_secrets: frozenset[str] = frozenset()) -> None:
    """What no schema sees, within one set of manifests: selectors, Service, Ingress and
    HTTPRoute backends, Secret and ConfigMap keys, volumes, probe and policy ports,
    budgets, labels. `absent_secrets` may be referenced without being there (prod's,
    created out of band)."""
    find, by_kind, workloads, pods_selected, service_port = (
        index.find, index.by_kind, index.workloads, index.pods_selected, index.service_port,
    )
    seen: set[tuple[str, str, str]] = set()
    for res in index.resources:
        key = (res.kind, res.namespace, res.name)
        if key in seen:
            report.error(f"{res}: defined twice")
        seen.add(key)


    # Labels: the conventions every resource of ours carries.
    for res in index.resources:
        meta_labels = (res.doc.get("metadata") or {}).get("labels") or {}
        if meta_labels.get(PART_OF[0]) != PART_OF[1]:
            report.error(f"{res}: label {PART_OF[0]}: {PART_OF[1]} missing")
        if "app.kubernetes.io/name" not in meta_labels:
            report.error(f"{res}: label app.kubernetes.io/name missing")
    for res in workloads:
        labels = pod_labels(res)
        for key in REQUIRED_LABELS:
            if key not in labels:
                report.error(f"{res}: pod template label {key} missing")
        if labels.get(PART_OF[0]) != PART_OF[1]:
            report.error(f"{res}: pod template label {PART_OF[0]}: {PART_OF[1]} missing")
        selector = (res.doc.get("spec") or {}).get("selector")
        # A Job's (and a CronJob's) selector is generated by the API server.
        if res.kind not in ("Pod", "Job", "CronJob") and (not selector or not selects(selector, labels)):
            report.error(f"{res}: spec.selector does not match its own pod template's labels")

    # Services: the selector matches some pod template; each targetPort exists there.
    services: dict[str, Resource] = {}
    for svc in by_kind.get("Service", []):
        services[svc.name] = svc
        spec = svc.doc.get("spec") or {}
        selector = spec.get("selector")
        if not selector:
            report.error(f"{svc}: no selector (endpoints would have to be managed by hand)")
            continue
        targets = pods_selected({"matchLabels": selector}, svc.namespace)
        if not targets:
            report.error(f"{svc}: selector {selector} matches no pod template")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for workload in targets:
                ports = container_ports(workload)
                if isinstance(target, str):
                    ok = any(p.get("name") == target for p in ports)
                else:
                    ok = any(p.get("containerPort") == target for p in ports)
                if not ok:
                    report.error(f"{svc}: targetPort {target!r} is not a container port of {workload}")

    # Ingress: every backend is an existing Service and port.
    for ing in by_kind.get("Ingress", []):
        spec = ing.doc.get("spec") or {}
        backends = [spec["defaultBackend"]] if spec.get("defaultBackend") else []
        backends += [p.get("backend") or {} for p in ingress_paths(ing)]
        for backend in backends:
            svc = backend.get("service") or {}
            name = svc.get("name")
            port = (svc.get("port") or {}).get("number", (svc.get("port") or {}).get("name"))
            if find("Service", name or "", ing.namespace) is None:
                report.error(f"{ing}: backend Service {name!r} does not exist")
            elif not service_port(name, port, ing.namespace):
                report.error(f"{ing}: backend {name}:{port} is not a port of Service {name}")
    gateway_api.check_refs(index, report.error)

    # Secrets and ConfigMaps: every referenced object and key exists.
    def keys_of(kind: str, name: str, namespace: str) -> set[str] | None:
        res = find(kind, name, namespace)
        if res is None:
            return None
        keys = set((res.doc.get("data") or {}).keys())
        keys |= set((res.doc.get("stringData") or {}).keys())
        keys |= set((res.doc.get("binaryData") or {}).keys())
        return keys

    def check_key(res: Resource, where: str, kind: str, ref: dict, key: str | None) -> None:
        name = ref.get("name") or ref.get("secretName") or ""
        keys = keys_of(kind, name, res.namespace)
        if keys is None and kind == "Secret" and name in absent_secrets:
            return
        if keys is None:
            report.error(f"{res}: {where}: {kind} {name!r} does not exist")
        elif key is not None and key not in keys:
            report.error(f"{res}: {where}: {kind} {name!r} has no key {key!r} (it has {sorted(keys)})")

    for res in workloads:
        spec = pod_spec(res) or {}
        for c in containers(spec):
            cname = c.get("name")
            for env in c.get("env") or []:
                source = env.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    check_key(res, f"{cname} env {env.get('name')}", "Secret", ref, ref.get("key"))
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    check_key(res, f"{cname} env {env.get('name')}", "ConfigMap", ref, ref.get("key"))
            for env_from in c.get("envFrom") or []:
                if "secretRef" in env_from:
                    check_key(res, f"{cname} envFrom", "Secret", env_from["secretRef"], None)
                if "configMapRef" in env_from:
                    check_key(res, f"{cname} envFrom", "ConfigMap", env_from["configMapRef"], None)
        for vol in spec.get("volumes") or []:
            for kind, field_name in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if field_name in vol:
                    ref = vol[field_name]
                    check_key(res, f"volume {vol.get('name')}", kind, ref, None)
                    for item in ref.get("items") or []:
                        check_key(res, f"volume {vol.get('name')}", kind, ref, item.get("key"))
            mounts = {m.get("name") for c in containers(spec) for m in c.get("volumeMounts") or []}
            if vol.get("name") not in mounts:
                report.error(f"{res}: volume {vol.get('name')} is mounted by no container")
        claim_names = {
            (t.get("metadata") or {}).get("name")
            for t in (res.doc.get("spec") or {}).get("volumeClaimTemplates") or []
        }
        volume_names = {v.get("name") for v in spec.get("volumes") or []} | claim_names
        for c in containers(spec):
            for m in c.get("volumeMounts") or []:
                if m.get("name") not in volume_names:
                    report.error(f"{res}: container {c.get('name')} mounts unknown volume {m.get('name')!r}")

    # Probes: the port they use exists.
    for res in workloads:
        for c in containers(pod_spec(res) or {}):
            names = {p.get("name") for p in c.get("ports") or []}
            numbers = {p.get("containerPort") for p in c.get("ports") or []}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(probe_name) or {}
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = (probe.get(handler) or {}).get("port")
                    if port is not None and port not in names and port not in numbers:
                        report.error(f"{res}: {c.get('name')} {probe_name} uses port {port!r}, which the container does not expose")

    # PodDisruptionBudgets: one per Deployment, selecting exactly its pods, never
    # blocking a drain of a one-replica Deployment.
    budgets = by_kind.get("PodDisruptionBudget", [])
    for pdb in budgets:
        spec = pdb.doc.get("spec") or {}
        if not pods_selected(spec.get("selector") or {}, pdb.namespace):
            report.error(f"{pdb}: selector {spec.get('selector')} selects no pod template")
        if "minAvailable" in spec:
            report.error(f"{pdb}: use maxUnavailable: minAvailable blocks every drain of a Deployment scaled to one replica")
    for depl in by_kind.get("Deployment", []):
        covering = [p for p in budgets if p.namespace == depl.namespace and selects((p.doc.get("spec") or {}).get("selector") or {}, pod_labels(depl))]
        if len(covering) != 1:
            report.error(f"{depl}: expected one PodDisruptionBudget selecting its pods, found {len(covering)}")

    # NetworkPolicies: each selects some pod; each peer selects some pod; ports exist.
    for pol in by_kind.get("NetworkPolicy", []):
        spec = pol.doc.get("spec") or {}
        targets = pods_selected(spec.get("podSelector") or {}, pol.namespace)
        if not targets:
            report.error(f"{pol}: podSelector {spec.get('podSelector')} selects no pod template")
        for direction in ("ingress", "egress"):
            for rule in spec.get(direction) or []:
                peers = rule.get("from" if direction == "ingress" else "to") or []
                for peer in peers:
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        if not pods_selected(peer["podSelector"], pol.namespace):
                            report.error(f"{pol}: {direction} peer podSelector {peer['podSelector']} selects no pod template")
                if direction == "ingress":
                    for port in rule.get("ports") or []:
                        value = port.get("port")
                        for workload in targets:
                            ports = container_ports(workload)
                            if not any(value in (p.get("containerPort"), p.get("name")) for p in ports):
                                report.error(f"{pol}: allows port {value!r}, which {workload} does not expose")
    # A server nobody can reach is a mistake; a Job (a backup) serves nothing.
    for res in (w for w in workloads if w.kind not in ("Job", "CronJob")):
        if not any(
            selects((pol.doc.get("spec") or {}).get("podSelector") or {}, pod_labels(res))
            and (pol.doc.get("spec") or {}).get("ingress")
            for pol in by_kind.get("NetworkPolicy", [])
        ):
            report.error(f"{res}: no NetworkPolicy allows any traffic to it")



def check_refs(root: Path, topology: Topology, report: Report) -> None:
    index = Index(load_manifests(root, report))
    check_resource_refs(index, report)
    find, by_kind, workloads, pods_selected, service_port = (
        index.find, index.by_kind, index.workloads, index.pods_selected, index.service_port,
    )
    # The routing is the course's.
    for ing in by_kind.get("Ingress", []):
        if Path(ing.file).name == INGRESS_FILE:
            check_ingress_contract(ing, ingress_paths(ing), topology, report)

    # Images: every one is built by skaffold (or pinned from a registry); every
    # artifact is used; every target is a stage of its Dockerfile.
    skaffold = load_skaffold(root, report) or {}
    artifacts = {}
    for art in ((skaffold.get("build") or {}).get("artifacts")) or []:
        image = art.get("image")
        artifacts[image] = art
        context = root / (art.get("context") or ".")
        docker = art.get("docker") or {}
        dockerfile = context / (docker.get("dockerfile") or "Dockerfile")
        if not dockerfile.is_file():
            report.error(f"{SKAFFOLD_FILE}: artifact {image}: {dockerfile.relative_to(root)} does not exist")
            continue
        target = docker.get("target")
        if target and target.lower() not in dockerfile_stages(dockerfile):
            report.error(
                f"{SKAFFOLD_FILE}: artifact {image}: target {target!r} is not a stage of "
                f"{dockerfile.relative_to(root)}"
            )
    used_artifacts = set()
    for res in workloads:
        for c in containers(pod_spec(res) or {}):
            image = c.get("image") or ""
            name, pinned = image_name(image)
            if image in artifacts:
                used_artifacts.add(image)
            elif name in artifacts:
                report.error(
                    f"{res}: container {c.get('name')}: image {image!r} carries a tag; skaffold "
                    f"replaces the bare name {name!r} with the tag it built"
                )
            elif not pinned:
                report.error(
                    f"{res}: container {c.get('name')}: image {image!r} is not built by "
                    f"{SKAFFOLD_FILE} (artifacts: {', '.join(sorted(artifacts))}) and pins no tag"
                )
    for image in sorted(set(artifacts) - used_artifacts):
        report.error(f"{SKAFFOLD_FILE}: artifact {image} is built but no manifest uses it")
    check_dockerfiles(root, topology, artifacts, report)
    # skaffold deploys what its kustomize paths render (the dev overlay, which is the
    # base as it is): every manifest must be in it.
    paths = (((skaffold.get("manifests") or {}).get("kustomize")) or {}).get("paths") or []
    if paths != [DEV_OVERLAY]:
        report.error(f"{SKAFFOLD_FILE}: manifests.kustomize.paths must be [{DEV_OVERLAY}], found {paths}")
    else:
        try:
            rendered = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in kustomize(root, DEV_OVERLAY)}
        except RuntimeError as exc:
            report.error(f"{SKAFFOLD_FILE}: {exc}")
            rendered = None
        for res in index.resources if rendered is not None else []:
            if (res.kind, res.name) not in rendered:
                report.error(f"{res}: not deployed by {SKAFFOLD_FILE}: {MANIFEST_DIR}/{KUSTOMIZATION} does not list {Path(res.file).name}")

    def env_values(res: Resource, container: dict) -> dict[str, str | None]:
        """Each variable a container gets and its literal value (resolved from the
        ConfigMap or Secret when possible); None when the value cannot be known."""
        values: dict[str, str | None] = {}
        for env_from in container.get("envFrom") or []:
            prefix = env_from.get("prefix") or ""
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in env_from:
                    obj = find(kind, env_from[key].get("name") or "", res.namespace)
                    if obj is not None:
                        for k, v in readable_data(obj).items():
                            values[prefix + k] = v
        for env in container.get("env") or []:
            name = env.get("name")
            if "value" in env:
                values[name] = "" if env["value"] is None else str(env["value"])
                continue
            source = env.get("valueFrom") or {}
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key in source:
                    ref = source[key]
                    obj = find(kind, ref.get("name") or "", res.namespace)
                    values[name] = None if obj is None else readable_data(obj).get(ref.get("key"))
            if name not in values:
                values[name] = None  # fieldRef / resourceFieldRef: set, value unknown
        return values

    # Environment: every variable the code reads is in the topology's env of its service
    # and set in its Deployment, and the Deployment sets nothing the code does not read
    # (a typo would go unnoticed). The Deployment, its container, the Service and the
    # database are the topology's too.
    for rel in SHARED_SOURCES:
        if not (root / rel).is_dir():
            report.error(f"{rel}/ does not exist (SHARED_SOURCES in scripts/k8s/checks.py: the crates every service links)")
    shared_reads = env_reads(root, SHARED_SOURCES)
    table_vars = set().union(*(s.env for s in topology.services.values()))
    for name, files in sorted(shared_reads.items()):
        if name.startswith("<unresolved"):
            report.error(f"{rel_paths(root, files)}: reads an environment variable through {name[12:-1]}, a name this check cannot resolve")
        elif name not in table_vars:
            report.error(
                f"{rel_paths(root, files)}: reads {name}, which no service's env in the topology lists "
                f"({TOPOLOGY_SOURCE}): add it for the services that read it, and set it in their Deployments"
            )
    all_reads = dict(shared_reads)
    for service in topology.services.values():
        expected = service.env
        if not (root / service.name / "src").is_dir():
            report.error(f"{service.name}/src/ does not exist, but {service.name} is a service of the topology ({TOPOLOGY_SOURCE})")
        own_reads = env_reads(root, [f"{service.name}/src"])
        for name, files in own_reads.items():
            all_reads.setdefault(name, set()).update(files)
            if name.startswith("<unresolved"):
                report.error(f"{rel_paths(root, files)}: reads an environment variable through {name[12:-1]}, a name this check cannot resolve")
            elif name not in expected:
                report.error(
                    f"{rel_paths(root, files)}: reads {name}, but the topology's env of {service.name!r} "
                    f"({TOPOLOGY_SOURCE}) does not list it"
                )
        found = check_workload(service, find, pods_selected, report)
        if found is None:
            continue
        depl, container = found
        values = env_values(depl, container)
        optional = {**OPTIONAL_UNSET_EVERYWHERE, **OPTIONAL_UNSET.get(service.name, {})}
        for name in sorted(expected):
            if name in values:
                if values[name] == "":
                    report.error(f"{depl}: {name} is set to an empty value, which {service.name} reads as unset")
            elif name in optional:
                if not optional[name].strip():
                    report.error(f"OPTIONAL_UNSET[{service.name!r}][{name!r}] has no reason")
            else:
                report.error(f"{depl}: {service.name} reads {name} at start-up but the Deployment does not set it")
        for name in sorted(set(values) - expected):
            report.error(f"{depl}: sets {name}, which {service.name} never reads (a typo, or a leftover?)")
        port = values.get("PORT")
        ports = [p.get("containerPort") for p in container.get("ports") or []]
        if port is not None and (not port.isdigit() or int(port) not in ports):
            report.error(f"{depl}: PORT={port} is not the container's port {ports}")
        if port is not None and port != str(service.port):
            report.error(f"{depl}: PORT={port}, but the topology's port of {service.name} is {service.port}")
        check_service_urls(depl, values, service_port, report)
        check_bus_urls(topology, depl, values, report)
        check_database_url(depl, values, find, by_kind, env_values, report)
        check_database_name(service, depl, values, report)
    for name in sorted(table_vars - set(all_reads)):
        report.error(
            f"the topology's env ({TOPOLOGY_SOURCE}) lists {name}, but no source in "
            f"{', '.join(SHARED_SOURCES)} or <service>/src reads it"
        )
    check_consumers(root, topology, report)

    # The client and every Deployment: the topology's.
    check_workload(topology.client, find, pods_selected, report)
    known = {w.deployment: w.name for w in topology.workloads()}
    for depl in by_kind.get("Deployment", []):
        if depl.name not in known:
            report.error(
                f"{depl}: runs nothing the topology ({TOPOLOGY_SOURCE}) knows: its Deployments are "
                f"{', '.join(sorted(known))}"
            )

    check_build_context(root, report)


def readable_data(obj: Resource) -> dict[str, str | None]:
    """A ConfigMap's or Secret's keys with their values; a Secret's base64 `data` is
    not decoded (None: set, value unknown), its `stringData` is plain."""
    values: dict[str, str | None] = {}
    for key, value in (obj.doc.get("data") or {}).items():
        values[key] = str(value) if obj.kind == "ConfigMap" else None
    for key, value in (obj.doc.get("stringData") or {}).items():
        values[key] = str(value)
    return values


def check_ingress_contract(ing: Resource, paths: list[dict], topology: Topology, report: Report) -> None:
    annotations = dict((ing.doc.get("metadata") or {}).get("annotations") or {})
    limits = {k: annotations.pop(k) for k in list(annotations) if k in INGRESS_LIMIT_ANNOTATIONS}
    if annotations != INGRESS_ALLOWED_ANNOTATIONS:
        report.error(
            f"{ing}: annotations must be exactly {INGRESS_ALLOWED_ANNOTATIONS} and the rate limits "
            f"{sorted(INGRESS_LIMIT_ANNOTATIONS)} (ingress-nginx is retired; keep the Ingress portable), "
            f"found {annotations}"
        )
    for key, value in limits.items():
        if not (isinstance(value, str) and value.isdigit() and int(value) > 0):
            report.error(f"{ing}: {key} must be a positive whole number as a string, found {value!r}")
    if (ing.doc.get("spec") or {}).get("ingressClassName") != "nginx":
        report.error(f"{ing}: ingressClassName must be nginx")
    hosts = [r.get("host") for r in (ing.doc.get("spec") or {}).get("rules") or []]
    if hosts != ["posts.com"]:
        report.error(f"{ing}: expected one rule for host posts.com, found {hosts}")
    for p in paths:
        if p.get("pathType") != "ImplementationSpecific":
            report.error(f"{ing}: path {p.get('path')} must be pathType ImplementationSpecific (a regex)")
    # ingress-nginx with use-regex: each path is a case-insensitive regex anchored at the
    # start; the longest path is tried first, and between equal lengths the greater string
    # (ingress-nginx sorts by path descending, then stably by length descending).
    ordered = sorted(paths, key=lambda p: (len(p.get("path") or ""), p.get("path") or ""), reverse=True)
    for request, expected in topology.routes:
        winner = None
        for p in ordered:
            try:
                if re.match(p.get("path") or "", request, re.IGNORECASE):
                    winner = ((p.get("backend") or {}).get("service") or {}).get("name")
                    break
            except re.error as exc:
                report.error(f"{ing}: path {p.get('path')!r} is not a valid regex: {exc}")
                return
        if winner != expected:
            report.error(f"{ing}: {request} is routed to {winner}, expected {expected}")


def check_workload(w: Workload, find, pods_selected, report: Report) -> tuple[Resource, dict] | None:
    """The topology's Deployment of a service (or the client) runs one container of its
    image on its port, and its Service answers on that port, in front of those pods
    only. Returns the Deployment and that container."""
    depl = find("Deployment", w.deployment)
    if depl is None:
        report.error(f"Deployment {w.deployment} (runs {w.name}, per the topology) does not exist")
        return None
    spec = pod_spec(depl) or {}
    main = [c for c in spec.get("containers") or [] if c.get("image") == w.image]
    if len(main) != 1:
        report.error(f"{depl}: expected one container with image {w.image} (the topology's image of {w.name})")
        return None
    container = main[0]
    container_ports = container.get("ports") or []
    numbers = [p.get("containerPort") for p in container_ports]
    if numbers != [w.port]:
        report.error(
            f"{depl}: container {container.get('name')} has containerPort {numbers}, but the topology's "
            f"port of {w.name} is {w.port}"
        )
    svc = find("Service", w.k8s_service)
    if svc is None:
        report.error(f"Service {w.k8s_service} (in front of {w.name}, per the topology) does not exist")
        return depl, container
    svc_spec = svc.doc.get("spec") or {}
    svc_ports = svc_spec.get("ports") or []
    if [p.get("port") for p in svc_ports] != [w.port]:
        report.error(
            f"{svc}: port {[p.get('port') for p in svc_ports]}, but the topology's port of {w.name} is {w.port}"
        )
    selector = svc_spec.get("selector")
    if selector:
        selected = pods_selected({"matchLabels": selector}, svc.namespace)
        if [r.name for r in selected] != [depl.name]:
            report.error(
                f"{svc}: selects the pods of {[str(r) for r in selected]}, but it is the Service of "
                f"{w.name} (topology) and must select exactly those of {depl}"
            )
    for p in svc_ports:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str):
            target = next((cp.get("containerPort") for cp in container_ports if cp.get("name") == target), target)
        if target != w.port:
            report.error(
                f"{svc}: port {p.get('port')} targets {target!r} in {depl}, not the topology's port of {w.name} ({w.port})"
            )
    return depl, container


def check_service_urls(depl: Resource, values: dict, service_port, report: Report) -> None:
    urls = []
    if values.get("EVENT_BUS_URL"):
        urls.append(("EVENT_BUS_URL", values["EVENT_BUS_URL"]))
    for entry in (values.get("EVENT_BUS_SUBSCRIBERS") or "").split(","):
        if entry.strip():
            name, _, url = entry.strip().partition("=")
            urls.append((f"EVENT_BUS_SUBSCRIBERS[{name}]", url))
    for var, url in urls:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            report.error(f"{depl}: {var}={url!r} is not an http URL")
            continue
        service = host.split(".")[0]
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not service_port(service, port):
            report.error(f"{depl}: {var}={url!r} names {service}:{port}, which is no Service port")


def consumers(root: Path, topology: Topology) -> set[str]:
    """The services whose code takes deliveries: their crate starts a consumer (POST /events)."""
    return {
        name
        for name in topology.services
        if any("start_consumer(" in f.read_text() for f in (root / name / "src").rglob("*.rs"))
    }


def check_consumers(root: Path, topology: Topology, report: Report) -> None:
    """The topology's consumesEvents against the code (a start_consumer( call)."""
    code = consumers(root, topology)
    for name, service in topology.services.items():
        if service.consumes_events and name not in code:
            report.error(
                f"the topology ({TOPOLOGY_SOURCE}) says {name} consumes events (consumesEvents: true), "
                f"but no source in {name}/src calls start_consumer(: one of the two is wrong"
            )
        elif not service.consumes_events and name in code:
            report.error(
                f"the topology ({TOPOLOGY_SOURCE}) says {name} consumes no events (consumesEvents: false), "
                f"but {name}/src calls start_consumer(: one of the two is wrong"
            )


def check_bus_urls(topology: Topology, depl: Resource, values: dict, report: Report) -> None:
    """EVENT_BUS_SUBSCRIBERS names exactly the topology's consumers, each at its Service
    and port; EVENT_BUS_URL is the bus's Service and port."""
    def names_service(url: str, service: Workload) -> bool:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            return False
        return (parts.hostname or "").split(".")[0] == service.k8s_service and port == service.port

    bus = topology.bus()
    url = values.get("EVENT_BUS_URL")
    if url and bus is not None and not names_service(url, bus):
        report.error(
            f"{depl}: EVENT_BUS_URL={url!r} is not the topology's Service of the bus, {bus.name} "
            f"({bus.k8s_service}:{bus.port})"
        )
    raw = values.get("EVENT_BUS_SUBSCRIBERS")
    if raw is None:
        return
    entries = dict(e.strip().partition("=")[::2] for e in raw.split(",") if e.strip())
    named = set(entries)
    expected = topology.consumers()
    if named != expected:
        report.error(
            f"{depl}: EVENT_BUS_SUBSCRIBERS names {sorted(named)}, but the services that consume "
            f"events (consumesEvents in the topology) are {sorted(expected)}: a subscriber without "
            "POST /events is retried forever, a consumer left out never gets an event"
        )
    for name, url in sorted(entries.items()):
        service = topology.services.get(name)
        if service is not None and not names_service(url, service):
            report.error(
                f"{depl}: EVENT_BUS_SUBSCRIBERS[{name}]={url!r} is not the topology's Service of {name} "
                f"({service.k8s_service}:{service.port})"
            )


def check_database_name(service: ServiceSpec, depl: Resource, values: dict, report: Report) -> None:
    url = values.get("DATABASE_URL")
    if not url:
        return
    database = urlsplit(url).path.lstrip("/")
    if database != service.database:
        report.error(
            f"{depl}: DATABASE_URL's database {database!r} is not the topology's database of "
            f"{service.name} {service.database!r}"
        )


def check_database_url(depl, values, find, by_kind, env_values, report: Report) -> None:
    url = values.get("DATABASE_URL")
    if not url:
        if "DATABASE_URL" in values:
            report.error(f"{depl}: DATABASE_URL's value cannot be read from its Secret (use stringData)")
        return
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        report.error(f"{depl}: DATABASE_URL is not a postgres:// URL")
        return
    service = find("Service", parts.hostname.split(".")[0])
    if service is None or parts.port not in [p.get("port") for p in (service.doc.get("spec") or {}).get("ports") or []]:
        report.error(f"{depl}: DATABASE_URL names {parts.hostname}:{parts.port}, which is no Service port")
        return
    selector = (service.doc.get("spec") or {}).get("selector") or {}
    dbs = [r for r in by_kind.get("StatefulSet", []) if selects({"matchLabels": selector}, pod_labels(r))]
    if len(dbs) != 1:
        report.error(f"{depl}: DATABASE_URL's host {parts.hostname} does not lead to exactly one StatefulSet")
        return
    db = dbs[0]
    spec = pod_spec(db) or {}
    pg = (spec.get("containers") or [{}])[0]
    env = env_values(db, pg)
    database = parts.path.lstrip("/")
    if env.get("POSTGRES_USER") != parts.username:
        report.error(f"{depl}: DATABASE_URL's user {parts.username!r} is not {db}'s POSTGRES_USER {env.get('POSTGRES_USER')!r}")
    if env.get("POSTGRES_DB") != database:
        report.error(f"{depl}: DATABASE_URL's database {database!r} is not {db}'s POSTGRES_DB {env.get('POSTGRES_DB')!r}")
    # The password: POSTGRES_PASSWORD, or the Secret key mounted at POSTGRES_PASSWORD_FILE.
    password = env.get("POSTGRES_PASSWORD")
    password_file = env.get("POSTGRES_PASSWORD_FILE")
    if password is None and password_file:
        for mount in pg.get("volumeMounts") or []:
            base = (mount.get("mountPath") or "").rstrip("/") + "/"
            if not password_file.startswith(base):
                continue
            item_path = password_file[len(base):]
            for vol in spec.get("volumes") or []:
                if vol.get("name") != mount.get("name") or "secret" not in vol:
                    continue
                items = vol["secret"].get("items") or []
                key = next((i.get("key") for i in items if i.get("path") == item_path), None)
                if key is None and not items:
                    key = item_path
                secret = find("Secret", vol["secret"].get("secretName") or "", db.namespace)
                if secret is not None and key:
                    password = (secret.doc.get("stringData") or {}).get(key)
    if password is None:
        report.error(f"{depl}: cannot find the password of {db} to compare with DATABASE_URL")
    elif str(password) != (parts.password or ""):
        report.error(f"{depl}: DATABASE_URL's password is not the one {db} is initialised with")


def check_build_context(root: Path, report: Report) -> None:
    """Every workspace member must be in the root build context (.dockerignore is an
    allow-list), or cargo cannot even load the workspace inside the image build."""
    cargo = root / "Cargo.toml"
    ignore = root / ".dockerignore"
    if not cargo.is_file() or not ignore.is_file():
        report.error("Cargo.toml or .dockerignore missing at the root")
        return
    members = tomllib.loads(cargo.read_text()).get("workspace", {}).get("members", [])
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for member in members:
        if member not in allowed:
            report.error(f".dockerignore: workspace member {member}/ is not allowed into the build context (add !{member}/)")
    for needed in ("Cargo.toml", "Cargo.lock"):
        if needed not in allowed:
            report.error(f".dockerignore: {needed} is not allowed into the build context")


# ---------------------------------------------------------------------------------- checkov
def load_checkov_skips(root: Path, report: Report) -> list[dict]:
    path = root / CHECKOV_SKIPS
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        report.error(f"{CHECKOV_SKIPS}: {exc}")
        return []
    skips = []
    for i, entry in enumerate(data.get("skips") or []):
        where = f"{CHECKOV_SKIPS}: skip #{i + 1}"
        if not isinstance(entry, dict) or set(entry) - {"check", "resources", "reason"}:
            report.error(f"{where}: must have exactly check, resources and reason")
            continue
        check = str(entry.get("check") or "")
        reason = " ".join(str(entry.get("reason") or "").split())
        resources = entry.get("resources")
        if not re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check):
            report.error(f"{where}: {check!r} is not a checkov check id")
            continue
        if len(reason) < 40:
            report.error(f"{where} ({check}): a skip needs its reason written out (at least a sentence)")
            continue
        if not isinstance(resources, list) or not resources or not all(isinstance(r, str) and r for r in resources):
            report.error(f"{where} ({check}): resources must be a non-empty list of patterns")
            continue
        skips.append({"check": check, "resources": resources, "reason": reason})
    return skips


def check_checkov(root: Path, _topology: Topology, report: Report) -> None:
    """checkov on the base's files, the Dockerfiles and every overlay's rendering."""
    with tempfile.TemporaryDirectory(prefix="check-k8s-rendered-") as tmp:
        # Relative paths, so that resource ids read /Dockerfile, not the checkout's location.
        files = [str(p.relative_to(root)) for p in manifest_files(root) + dockerfiles(root)]
        if (root / RESTORE_JOB).is_file():
            files.append(RESTORE_JOB)  # applied by hand, not rendered
        renderings = {}
        for name in overlay_names(root):
            try:
                docs = kustomize(root, f"{OVERLAYS_DIR}/{name}")
            except RuntimeError:
                continue  # the overlays check says why
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            files.append(str(path))
            # checkov names a file by its path relative to the working directory.
            renderings[f"{Path(tmp).name}/{path.name}"] = f"{OVERLAYS_DIR}/{name} (rendered)"
        run_checkov(root, files, renderings, report)


def run_checkov(root: Path, files: list[str], renderings: dict[str, str], report: Report) -> None:
    skips = load_checkov_skips(root, report)
    checkov = shutil.which("checkov", path=str(Path(sys.executable).parent)) or shutil.which("checkov")
    if checkov is None:
        report.error("checkov is not installed (scripts/check-k8s installs it)")
        return
    env = dict(os.environ)
    env.pop("BC_API_KEY", None)  # never talk to the platform; scan locally only
    env.update(
        {
            "BC_SKIP_MAPPING": "TRUE",
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
            "CKV_PARSE_ERROR_FAIL": "true",
            "LOG_LEVEL": "ERROR",
        }
    )
    cmd = [
        checkov,
        "--framework", "kubernetes", "dockerfile",
        "--skip-download",
        "--quiet",
        "--compact",
        "--output", "json",
        "--file", *files,
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    try:
        results = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report.error(f"checkov did not produce a report (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return
    if isinstance(results, dict):
        results = [results]
    frameworks = {r.get("check_type") for r in results}
    for expected in ("kubernetes", "dockerfile"):
        if expected not in frameworks:
            report.error(f"checkov scanned no {expected} resources")
    used = [[False] * len(s["resources"]) for s in skips]
    for result in results:
        summary = result.get("summary") or {}
        if summary.get("parsing_errors"):
            report.error(f"checkov could not parse: {result.get('results', {}).get('parsing_errors')}")
        for failed in (result.get("results") or {}).get("failed_checks") or []:
            check_id, resource = failed.get("check_id"), failed.get("resource") or ""
            resource = resource.rstrip(".").lstrip("/")
            accepted = False
            for si, skip in enumerate(skips):
                if skip["check"] != check_id:
                    continue
                for ri, pattern in enumerate(skip["resources"]):
                    if fnmatch.fnmatchcase(resource, pattern):
                        used[si][ri] = True
                        accepted = True
            if not accepted:
                file_path = failed.get("file_path", "")
                file_path = next((v for k, v in renderings.items() if file_path.endswith("/" + k)), file_path.lstrip("/"))
                report.error(
                    f"checkov {check_id} failed for {resource} ({file_path}): "
                    f"{failed.get('check_name')}"
                )
    # A skip that matches nothing is stale: remove it, so that the list stays the truth.
    for si, skip in enumerate(skips):
        for ri, pattern in enumerate(skip["resources"]):
            if not used[si][ri]:
                report.error(f"{CHECKOV_SKIPS}: skip {skip['check']} for {pattern!r} matches no finding any more: remove it")


# ---------------------------------------------------------------------------------- hadolint
def dockerfiles(root: Path) -> list[Path]:
    found = []
    for pattern in ("Dockerfile", "*/Dockerfile", "*.Dockerfile", "*/*.Dockerfile"):
        found += [p for p in root.glob(pattern) if p.is_file()]
    return sorted(set(found))


def check_hadolint(root: Path, _topology: Topology, report: Report) -> None:
    files = dockerfiles(root)
    if not files:
        report.error("no Dockerfile found")
        return
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        report.error("hadolint is not installed (scripts/check-k8s installs it)")
        return
    config = root / HADOLINT_CONFIG
    if not config.is_file():
        report.error(f"{HADOLINT_CONFIG} missing")
        return
    check_hadolint_config(config, report)
    cmd = [
        hadolint,
        "--config", str(config),
        "--failure-threshold", "warning",
        # Ignores live in .hadolint.yaml with their reasons, not in Dockerfile comments.
        "--disable-ignore-pragma",
        "--no-color",
        *[str(f.relative_to(root)) for f in files],
    ]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        report.error(f"hadolint (exit {proc.returncode}):\n{output}")


def check_hadolint_config(config: Path, report: Report) -> None:
    """Every ignored rule needs a comment on the line above it saying why."""
    lines = config.read_text().splitlines()
    data = yaml.safe_load("\n".join(lines)) or {}
    ignored = data.get("ignored") or []
    for rule in ignored:
        index = next((i for i, line in enumerate(lines) if re.match(rf"\s*-\s*{re.escape(rule)}\s*(#.*)?$", line)), None)
        if index is None:
            continue
        inline = lines[index].split("#", 1)[1].strip() if "#" in lines[index] else ""
        above = lines[index - 1].strip() if index > 0 else ""
        if len(inline) < 20 and not (above.startswith("#") and len(above) > 20):
            report.error(f"{HADOLINT_CONFIG}: ignored rule {rule} has no reason written next to it")


CHECKS = {
    "schema": check_schema,
    "overlays": check_overlays,
    "refs": check_refs,
    "checkov": check_checkov,
    "hadolint": check_hadolint,
    "skaffold": check_skaffold,
}


def run_checks(root: Path, topology: Topology, only: list[str] | None = None) -> dict[str, list[str]]:
    results = {}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        report = Report()
        try:
            check(root, topology, report)
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failing check
            report.error(f"the check crashed: {type(exc).__name__}: {exc}")
        results[name] = report.errors
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(HERE.parent.parent), help="root of the checkout to check")
    parser.add_argument(
        "--topology",
        required=True,
        metavar="FILE",
        help=f"the services and routes, as JSON in the format of `{TOPOLOGY_SOURCE}`",
    )
    parser.add_argument("--only", action="append", choices=list(CHECKS), help="run only this check (repeatable)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    try:
        topology = load_topology(Path(args.topology))
    except TopologyError as exc:
        print(f"checks.py: the topology {args.topology}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name, errors in run_checks(root, topology, args.only).items():
        if errors:
            failed += 1
            print(f"FAIL {name}: {len(errors)} problem(s)")
            for error in errors:
                print("  - " + error.replace("\n", "\n    "))
        else:
            print(f"ok   {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
