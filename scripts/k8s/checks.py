#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests, the Dockerfiles and skaffold.yaml.

Run through scripts/check-k8s, which provides the tools (a venv from
scripts/k8s/requirements.txt). Every check takes the root of a checkout, so the
self-test (test_checks.py) can run it on a deliberately broken copy.

    checks.py [--root DIR] [--only NAME ...]

Checks, each failing the run on a real mistake:
  schema     every manifest against the Kubernetes OpenAPI schema, strict (unknown
             fields and wrong types rejected; a kind without a schema is a failure)
  refs       what no schema sees: selectors, Ingress backends and routing, images vs
             skaffold artifacts and Dockerfile stages, Secret/ConfigMap keys, the env
             vars the Rust code reads vs each Deployment, DATABASE_URL vs its
             database, service URLs, probe and policy ports, NetworkPolicy selectors,
             labels, the Docker build context
  checkov    policy scan of manifests and Dockerfiles; accepted findings only from
             infra/checks/checkov-skips.yaml, each with its reason
  hadolint   every Dockerfile, failure threshold warning, ignores only in .hadolint.yaml
  skaffold   skaffold.yaml against the skaffold/v4beta14 JSON schema
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

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

# ---------------------------------------------------------------------------------
# What each Rust binary reads from the environment at start-up: the one place this is
# written down. The refs check greps the sources too (see ENV_READ_PATTERNS), so a
# variable added to the code but not here, or here but not in the Deployment, fails.
COMMON_ENV = {"PORT", "DATABASE_URL", "LOG_FORMAT", "RUST_LOG", "EVENT_BUS_TOKEN"}
BUS_USER_ENV = COMMON_ENV | {"EVENT_BUS_URL"}
SERVICE_ENV: dict[str, set[str]] = {
    "posts": BUS_USER_ENV,
    "comments": BUS_USER_ENV,
    "query": BUS_USER_ENV,
    "moderation": BUS_USER_ENV | {"MODERATION_BLOCKLIST"},
    "event-bus": COMMON_ENV
    | {"EVENT_BUS_SUBSCRIBERS", "EVENT_BUS_BATCH_SIZE", "EVENT_BUS_RETRY_MAX_MS"},
}
# A variable the code reads with a default may be left out of its Deployment only if
# it is listed here, per service, with the reason. Everything else must be set.
OPTIONAL_UNSET: dict[str, dict[str, str]] = {
    # e.g. "query": {"RUST_LOG": "the built-in filter is what we want in the cluster"},
}
# The Deployment that runs each binary, and the source directories of the binary's own
# crate; common/src is shared by all of them.
SERVICE_DEPLOYMENT = {name: f"{name}-depl" for name in SERVICE_ENV}
SHARED_SOURCES = ["common/src"]
# Test support is compiled only into tests (feature test-support), never into a binary;
# pg_cluster runs PostgreSQL from the machine's binaries for the tests, the load tool and
# the local runner (devstack), and no service calls it.
EXCLUDED_SOURCES = ["common/src/testing", "common/src/pg_cluster.rs"]

# How the code reads a variable: common::config::Env's accessors with a literal or a
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
INGRESS_FILE = "ingress-srv.yaml"
INGRESS_ALLOWED_ANNOTATIONS = {"nginx.ingress.kubernetes.io/use-regex": "true"}
INGRESS_ROUTES = [
    # (request path, Service that must answer it)
    ("/posts/create", "posts-clusterip-srv"),
    ("/posts/0190b8a4/comments", "comments-srv"),
    ("/posts/abc123/comments", "comments-srv"),
    ("/posts", "query-srv"),
    ("/posts/", "query-srv"),
    ("/posts/0190b8a4", "query-srv"),
    ("/posts/stream", "query-srv"),
    ("/", "client-srv"),
    ("/index.html", "client-srv"),
    ("/assets/index-abc.js", "client-srv"),
    # The bus and every service's delivery endpoint are never public.
    ("/events", "client-srv"),
    ("/events/", "client-srv"),
    ("/subscriptions", "client-srv"),
]

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


def manifest_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / MANIFEST_DIR).glob("*") if p.is_file())


def load_manifests(root: Path, report: Report) -> list[Resource]:
    resources = []
    files = manifest_files(root)
    if not files:
        report.error(f"no manifests in {MANIFEST_DIR}/")
    for path in files:
        rel = str(path.relative_to(root))
        if path.suffix not in (".yaml", ".yml"):
            report.error(f"{rel}: not a .yaml file, but skaffold applies every file in {MANIFEST_DIR}/")
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


def pod_spec(res: Resource) -> dict | None:
    if res.kind in WORKLOAD_KINDS:
        return ((res.doc.get("spec") or {}).get("template") or {}).get("spec")
    if res.kind == "Pod":
        return res.doc.get("spec")
    return None


def pod_labels(res: Resource) -> dict:
    if res.kind == "Pod":
        return (res.doc.get("metadata") or {}).get("labels") or {}
    return (((res.doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


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
def check_schema(root: Path, report: Report) -> None:
    for res in load_manifests(root, report):
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(res.doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path) or "(top level)"
                report.error(f"{res}: invalid for Kubernetes {version} at {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                # kubernetes-validate only warns here; an unknown kind or apiVersion is
                # a mistake for us (a typo, or an API removed from Kubernetes).
                report.error(f"{res}: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - report any validator failure as ours
                report.error(f"{res}: could not be validated for {version}: {exc}")


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


def check_skaffold(root: Path, report: Report) -> None:
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


# ---------------------------------------------------------------------------------- refs
def dockerfile_stages(path: Path) -> set[str]:
    stages = set()
    for line in path.read_text().splitlines():
        m = re.match(r"\s*FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", line, re.IGNORECASE)
        if m and m.group(1):
            stages.add(m.group(1).lower())
    return stages


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


def check_refs(root: Path, report: Report) -> None:
    resources = load_manifests(root, report)
    by_kind: dict[str, list[Resource]] = {}
    for res in resources:
        by_kind.setdefault(res.kind, []).append(res)

    def find(kind: str, name: str, namespace: str = "default") -> Resource | None:
        for res in by_kind.get(kind, []):
            if res.name == name and res.namespace == namespace:
                return res
        return None

    workloads = [r for r in resources if pod_spec(r) is not None]
    seen: set[tuple[str, str, str]] = set()
    for res in resources:
        key = (res.kind, res.namespace, res.name)
        if key in seen:
            report.error(f"{res}: defined twice")
        seen.add(key)

    # Labels: the conventions every resource of ours carries.
    for res in resources:
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
        if res.kind != "Pod" and (not selector or not selects(selector, labels)):
            report.error(f"{res}: spec.selector does not match its own pod template's labels")

    def pods_selected(selector: dict, namespace: str) -> list[Resource]:
        return [w for w in workloads if w.namespace == namespace and selects(selector, pod_labels(w))]

    def container_ports(workload: Resource) -> list[dict]:
        return [p for c in containers(pod_spec(workload) or {}) for p in c.get("ports") or []]

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

    def service_port(name: str, port: int | str, namespace: str = "default") -> bool:
        svc = find("Service", name, namespace)
        if svc is None:
            return False
        for p in (svc.doc.get("spec") or {}).get("ports") or []:
            if port in (p.get("port"), p.get("name")):
                return True
        return False

    # Ingress: every backend is an existing Service and port; the routing is the course's.
    for ing in by_kind.get("Ingress", []):
        spec = ing.doc.get("spec") or {}
        backends = []
        if spec.get("defaultBackend"):
            backends.append(spec["defaultBackend"])
        paths = []
        for rule in spec.get("rules") or []:
            for p in ((rule.get("http") or {}).get("paths")) or []:
                backends.append(p.get("backend") or {})
                paths.append(p)
        for backend in backends:
            svc = backend.get("service") or {}
            name = svc.get("name")
            port = (svc.get("port") or {}).get("number", (svc.get("port") or {}).get("name"))
            if find("Service", name or "", ing.namespace) is None:
                report.error(f"{ing}: backend Service {name!r} does not exist")
            elif not service_port(name, port, ing.namespace):
                report.error(f"{ing}: backend {name}:{port} is not a port of Service {name}")
        if Path(ing.file).name == INGRESS_FILE:
            check_ingress_contract(ing, paths, report)

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
    raw = ((skaffold.get("manifests") or {}).get("rawYaml")) or []
    applied = {Path(p).resolve() for pattern in raw for p in glob.glob(str(root / pattern))}
    for path in manifest_files(root):
        if path.resolve() not in applied:
            report.error(f"{path.relative_to(root)}: not applied by {SKAFFOLD_FILE} (manifests.rawYaml)")

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

    # Environment: every variable the code reads is set in its Deployment, and the
    # Deployment sets nothing the code does not read (a typo would go unnoticed).
    shared_reads = env_reads(root, SHARED_SOURCES)
    table_vars = set().union(*SERVICE_ENV.values())
    for name, files in sorted(shared_reads.items()):
        if name.startswith("<unresolved"):
            report.error(f"{rel_paths(root, files)}: reads an environment variable through {name[12:-1]}, a name this check cannot resolve")
        elif name not in table_vars:
            report.error(
                f"{rel_paths(root, files)}: reads {name}, which no service lists in SERVICE_ENV "
                f"(scripts/k8s/checks.py): add it for the services that read it, and set it in their Deployments"
            )
    all_reads = dict(shared_reads)
    for service, expected in SERVICE_ENV.items():
        own_reads = env_reads(root, [f"{service}/src"])
        for name, files in own_reads.items():
            all_reads.setdefault(name, set()).update(files)
            if name.startswith("<unresolved"):
                report.error(f"{rel_paths(root, files)}: reads an environment variable through {name[12:-1]}, a name this check cannot resolve")
            elif name not in expected:
                report.error(
                    f"{rel_paths(root, files)}: reads {name}, but SERVICE_ENV[{service!r}] "
                    f"(scripts/k8s/checks.py) does not list it"
                )
        depl = find("Deployment", SERVICE_DEPLOYMENT[service])
        if depl is None:
            report.error(f"Deployment {SERVICE_DEPLOYMENT[service]} (runs {service}) does not exist")
            continue
        spec = pod_spec(depl) or {}
        main = [c for c in spec.get("containers") or [] if c.get("image") == f"microblog/{service}"]
        if len(main) != 1:
            report.error(f"{depl}: expected one container with image microblog/{service}")
            continue
        values = env_values(depl, main[0])
        optional = OPTIONAL_UNSET.get(service, {})
        for name in sorted(expected):
            if name in values:
                if values[name] == "":
                    report.error(f"{depl}: {name} is set to an empty value, which {service} reads as unset")
            elif name in optional:
                if not optional[name].strip():
                    report.error(f"OPTIONAL_UNSET[{service!r}][{name!r}] has no reason")
            else:
                report.error(f"{depl}: {service} reads {name} at start-up but the Deployment does not set it")
        for name in sorted(set(values) - expected):
            report.error(f"{depl}: sets {name}, which {service} never reads (a typo, or a leftover?)")
        port = values.get("PORT")
        ports = [p.get("containerPort") for p in main[0].get("ports") or []]
        if port is not None and (not port.isdigit() or int(port) not in ports):
            report.error(f"{depl}: PORT={port} is not the container's port {ports}")
        check_service_urls(depl, values, service_port, report)
        check_subscribers(root, depl, values, report)
        check_database_url(depl, values, find, by_kind, env_values, report)
    for name in sorted(table_vars - set(all_reads)):
        report.error(
            f"SERVICE_ENV (scripts/k8s/checks.py) lists {name}, but no source in "
            f"{', '.join(SHARED_SOURCES)} or <service>/src reads it"
        )

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
    for res in workloads:
        if not any(
            selects((pol.doc.get("spec") or {}).get("podSelector") or {}, pod_labels(res))
            and (pol.doc.get("spec") or {}).get("ingress")
            for pol in by_kind.get("NetworkPolicy", [])
        ):
            report.error(f"{res}: no NetworkPolicy allows any traffic to it")

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


def check_ingress_contract(ing: Resource, paths: list[dict], report: Report) -> None:
    annotations = (ing.doc.get("metadata") or {}).get("annotations") or {}
    if annotations != INGRESS_ALLOWED_ANNOTATIONS:
        report.error(
            f"{ing}: annotations must be exactly {INGRESS_ALLOWED_ANNOTATIONS} "
            f"(ingress-nginx is retired; keep the Ingress portable), found {annotations}"
        )
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
    for request, expected in INGRESS_ROUTES:
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


def consumers(root: Path) -> set[str]:
    """The services that take deliveries: their crate starts a consumer (POST /events)."""
    return {
        name
        for name in SERVICE_ENV
        if any("start_consumer(" in f.read_text() for f in (root / name / "src").rglob("*.rs"))
    }


def check_subscribers(root: Path, depl: Resource, values: dict, report: Report) -> None:
    raw = values.get("EVENT_BUS_SUBSCRIBERS")
    if raw is None:
        return
    named = {e.strip().partition("=")[0] for e in raw.split(",") if e.strip()}
    expected = consumers(root)
    if named != expected:
        report.error(
            f"{depl}: EVENT_BUS_SUBSCRIBERS names {sorted(named)}, but the services that "
            f"consume events (start_consumer) are {sorted(expected)}: a subscriber without "
            "POST /events is retried forever, a consumer left out never gets an event"
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


def check_checkov(root: Path, report: Report) -> None:
    skips = load_checkov_skips(root, report)
    # Relative paths, so that resource ids read /Dockerfile, not the checkout's location.
    files = [str(p.relative_to(root)) for p in manifest_files(root) + dockerfiles(root)]
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
                report.error(
                    f"checkov {check_id} failed for {resource} ({failed.get('file_path', '').lstrip('/')}): "
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


def check_hadolint(root: Path, report: Report) -> None:
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
    "refs": check_refs,
    "checkov": check_checkov,
    "hadolint": check_hadolint,
    "skaffold": check_skaffold,
}


def run_checks(root: Path, only: list[str] | None = None) -> dict[str, list[str]]:
    results = {}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        report = Report()
        try:
            check(root, report)
        except Exception as exc:  # noqa: BLE001 - a crashing check is a failing check
            report.error(f"the check crashed: {type(exc).__name__}: {exc}")
        results[name] = report.errors
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(HERE.parent.parent), help="root of the checkout to check")
    parser.add_argument("--only", action="append", choices=list(CHECKS), help="run only this check (repeatable)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    failed = 0
    for name, errors in run_checks(root, args.only).items():
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
