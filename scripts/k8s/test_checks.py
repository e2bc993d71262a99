#!/usr/bin/env python3
"""Self-test of checks.py: each check must fail on a deliberately broken copy.

Copies what the checks read (manifests, Dockerfiles, skaffold.yaml, the Rust sources
the env check greps, the skip lists) into a temporary directory, proves that the
unbroken copy passes every check against the topology, then applies one breakage at a
time (to the copy, or to a copy of the topology) and asserts that the check meant to
catch it fails, naming the problem.

    test_checks.py --topology FILE [--root DIR]

FILE is the topology in the format of `devstack topology --json`, as for checks.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

import checks


def copied(topology: checks.Topology) -> list[str]:
    return [
        "infra",
        "skaffold.yaml",
        "Dockerfile",
        ".dockerignore",
        ".hadolint.yaml",
        "Cargo.toml",
        "client/Dockerfile",
        "client/nginx.conf",
        "client/.dockerignore",
        *checks.SHARED_SOURCES,
        *[f"{service}/src" for service in topology.services],
    ]


def copy_tree(src_root: Path, dst_root: Path, topology: checks.Topology) -> None:
    for rel in copied(topology):
        src = src_root / rel
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.is_file():
            shutil.copy2(src, dst)
        else:
            raise SystemExit(f"self-test: {rel} missing from {src_root}")


def edit(root: Path, rel: str, old: str, new: str, count: int = 1) -> None:
    """Replace `old` by `new` in a file; the breakage must really apply."""
    path = root / rel
    text = path.read_text()
    found = text.count(old)
    if found < count or (count == 1 and found != 1):
        raise AssertionError(f"breakage does not apply: {old!r} occurs {found} times in {rel}")
    path.write_text(text.replace(old, new))


def drop_env(root: Path, rel: str, name: str) -> None:
    """Remove one env entry (the `- name:` line and its indented body) from a manifest."""
    path = root / rel
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {name}")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (len(lines[end]) - len(lines[end].lstrip()) > indent) and lines[end].strip():
        end += 1
    path.write_text("".join(lines[:start] + lines[end:]))


def drop_block(root: Path, rel: str, key: str) -> None:
    """Remove the first `key:` mapping entry and everything nested under it."""
    path = root / rel
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == f"{key}:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    path.write_text("".join(lines[:start] + lines[end:]))


def drop_stage(root: Path, rel: str, name: str) -> None:
    """Remove one stage (its FROM line up to the next FROM) from a Dockerfile."""
    path = root / rel
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if re.match(rf"FROM\s+\S+\s+AS\s+{re.escape(name)}\s*$", line, re.IGNORECASE))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"FROM\s", lines[i], re.IGNORECASE)), len(lines))
    path.write_text("".join(lines[:start] + lines[end:]))


def edit_shared(root: Path, old: str, new: str) -> None:
    """Replace `old` by `new` in the shared crates' sources, wherever it is."""
    found = [p for rel in checks.SHARED_SOURCES for p in sorted((root / rel).rglob("*.rs")) if old in p.read_text()]
    if not found:
        raise AssertionError(f"breakage does not apply: {old!r} is in no file of {', '.join(checks.SHARED_SOURCES)}")
    for path in found:
        edit(root, str(path.relative_to(root)), old, new)


def service_of(topology: dict, name: str) -> dict:
    """A service's entry in the topology's JSON."""
    return next(s for s in topology["services"] if s["name"] == name)


@dataclass
class Case:
    name: str
    check: str
    breakage: Callable[[Path], None]
    # Each must appear in one of the check's error messages (regular expressions).
    expected: list[str]
    # A breakage of the topology instead (or as well): edits a copy of its JSON.
    topology_edit: Callable[[dict], None] | None = None


def run_as_root(root: Path) -> None:
    for old, new in (
        ("runAsNonRoot: true", "runAsNonRoot: false"),
        ("runAsUser: 65532", "runAsUser: 0"),
    ):
        edit(root, "infra/k8s/comments-depl.yaml", old, new, count=2)


def unjustified_skip(root: Path) -> None:
    path = root / "infra/checks/checkov-skips.yaml"
    data = yaml.safe_load(path.read_text())
    entry = next(e for e in data["skips"] if e["check"] == "CKV_DOCKER_2")
    entry["reason"] = "fine"
    path.write_text(yaml.safe_dump(data))


def broken_policies(root: Path) -> None:
    drop_block(root, "infra/k8s/posts-depl.yaml", "limits")  # no CPU/memory limits
    run_as_root(root)  # comments runs as root
    edit(root, "infra/k8s/query-depl.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
    drop_block(root, "infra/k8s/client-depl.yaml", "readinessProbe")


GATEWAY_ROUTES = "infra/overlays/gateway/http-routes.yaml"


def cases(topology: checks.Topology) -> list[Case]:
    """The breakages. Ports, Services and databases are the topology's, so that nothing
    here repeats them."""
    workloads = {w.name: w for w in topology.workloads()}
    port = {name: w.port for name, w in workloads.items()}
    srv = {name: w.k8s_service for name, w in workloads.items()}
    wrong = max(port.values()) + 11  # a port nothing uses

    def sub(name: str, at: int | None = None) -> str:
        """A subscriber entry of EVENT_BUS_SUBSCRIBERS."""
        return f"{name}=http://{srv[name]}:{port[name] if at is None else at}/events"

    shared = "(?:" + "|".join(re.escape(s) for s in checks.SHARED_SOURCES) + r")/\S*\.rs"
    return [
        Case(
            "an unknown field in a Deployment (a typo) is rejected by the strict schema",
            "schema",
            lambda r: edit(r, "infra/k8s/posts-depl.yaml", "  replicas: 1\n", "  replicas: 1\n  replica: 2\n"),
            [r"Deployment/posts-depl.*Additional properties are not allowed \('replica' was unexpected\)"],
        ),
        Case(
            "a wrong type (a port as a string) is rejected by the schema",
            "schema",
            lambda r: edit(r, "infra/k8s/comments-depl.yaml", f"containerPort: {port['comments']}", f'containerPort: "{port["comments"]}"'),
            [rf"Deployment/comments-depl.*containerPort: '{port['comments']}' is not of type 'integer'"],
        ),
        Case(
            "a kind or apiVersion without a schema fails instead of warning",
            "schema",
            lambda r: edit(r, "infra/k8s/ingress-srv.yaml", "networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
            [r"Couldn't find schema for kind Ingress with api version networking.k8s.io/v1beta1"],
        ),
        Case(
            "a Service whose selector matches no pod",
            "refs",
            lambda r: edit(r, "infra/k8s/query-depl.yaml", "  selector:\n    app: query\n", "  selector:\n    app: querry\n"),
            [r"Service/query-srv.*selector \{'app': 'querry'\} matches no pod template"],
        ),
        Case(
            "a PodDisruptionBudget that selects no pod, leaving its Deployment without one",
            "refs",
            lambda r: edit(r, "infra/k8s/query-depl.yaml", "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app: query\n", "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app: querry\n"),
            [r"PodDisruptionBudget/query-pdb.*selects no pod template", r"Deployment/query-depl.*expected one PodDisruptionBudget selecting its pods, found 0"],
        ),
        Case(
            "a PodDisruptionBudget with minAvailable, which blocks draining a one-replica Deployment",
            "refs",
            lambda r: edit(r, "infra/k8s/posts-depl.yaml", "  maxUnavailable: 1\n", "  minAvailable: 1\n"),
            [r"PodDisruptionBudget/posts-pdb.*use maxUnavailable"],
        ),
        Case(
            "an Ingress backend naming a Service that does not exist",
            "refs",
            lambda r: edit(r, "infra/k8s/ingress-srv.yaml", "name: comments-srv", "name: comment-srv"),
            [r"backend Service 'comment-srv' does not exist"],
        ),
        Case(
            "an Ingress path that would expose the bus's /events",
            "refs",
            lambda r: edit(
                r,
                "infra/k8s/ingress-srv.yaml",
                "          - path: /posts/create\n",
                "          - path: /events\n            pathType: ImplementationSpecific\n"
                f"            backend:\n              service:\n                name: {srv['event-bus']}\n"
                f"                port:\n                  number: {port['event-bus']}\n          - path: /posts/create\n",
            ),
            [rf"/events is routed to {srv['event-bus']}, expected {srv['client']}"],
        ),
        Case(
            "an image that skaffold does not build",
            "refs",
            lambda r: edit(r, "infra/k8s/posts-depl.yaml", "image: microblog/posts", "image: microblog/post"),
            [r"image 'microblog/post' is not built by skaffold.yaml", r"artifact microblog/posts is built but no manifest uses it"],
        ),
        Case(
            "a skaffold target that is no stage of the Dockerfile",
            "refs",
            lambda r: edit(r, "skaffold.yaml", "target: moderation", "target: moderator"),
            [r"target 'moderator' is not a stage of Dockerfile"],
        ),
        Case(
            "a Secret key that does not exist",
            "refs",
            lambda r: edit(r, "infra/k8s/moderation-depl.yaml", "key: DATABASE_URL", "key: DATABASE_ULR"),
            [r"Secret 'moderation-db-credentials' has no key 'DATABASE_ULR'"],
        ),
        Case(
            "a ConfigMap that does not exist",
            "refs",
            lambda r: edit(r, "infra/k8s/moderation-depl.yaml", "name: moderation-config\n                  key", "name: moderation-cfg\n                  key"),
            [r"ConfigMap 'moderation-cfg' does not exist"],
        ),
        Case(
            "an env var the code reads, missing from its Deployment",
            "refs",
            lambda r: drop_env(r, "infra/k8s/comments-depl.yaml", "EVENT_BUS_URL"),
            [r"comments reads EVENT_BUS_URL at start-up but the Deployment does not set it"],
        ),
        Case(
            "an env var newly read in the code, which the topology does not list",
            "refs",
            lambda r: edit(
                r,
                "moderation/src/lib.rs",
                '.optional("MODERATION_BLOCKLIST")',
                '.optional("MODERATION_BLOCKLIST").or(env.optional("MODERATION_ALLOWLIST"))',
            ),
            [r"moderation/src/lib.rs: reads MODERATION_ALLOWLIST, but the topology's env of 'moderation'"],
        ),
        Case(
            "an env var read through a const in a shared crate, unknown to the topology",
            "refs",
            lambda r: edit_shared(
                r,
                'const NAME: &str = "EVENT_BUS_SUBSCRIBERS";',
                'const NAME: &str = "EVENT_BUS_SUBSCRIBER_LIST";',
            ),
            [shared + r": reads EVENT_BUS_SUBSCRIBER_LIST, which no service's env in the topology lists"],
        ),
        Case(
            "an env var in the topology that its Deployment does not set and no code reads",
            "refs",
            lambda r: None,
            [
                r"Deployment/moderation-depl.*moderation reads MODERATION_ALLOWLIST at start-up but the Deployment does not set it",
                r"the topology's env .* lists MODERATION_ALLOWLIST, but no source .* reads it",
            ],
            topology_edit=lambda t: service_of(t, "moderation")["env"].append("MODERATION_ALLOWLIST"),
        ),
        Case(
            "a misspelt env var in a Deployment (set, but read by nothing)",
            "refs",
            lambda r: edit(r, "infra/k8s/query-depl.yaml", "- name: RUST_LOG", "- name: RUST_LOGS"),
            [r"query reads RUST_LOG at start-up but the Deployment does not set it", r"sets RUST_LOGS, which query never reads"],
        ),
        Case(
            "a DATABASE_URL whose password is not its database's",
            "refs",
            lambda r: edit(r, "infra/k8s/posts-db.yaml", "postgres://posts:posts-dev-password@", "postgres://posts:other@"),
            [r"Deployment/posts-depl.*DATABASE_URL's password is not the one StatefulSet/posts-db"],
        ),
        Case(
            "a database renamed in DATABASE_URL and POSTGRES_DB alike, so only the topology disagrees",
            "refs",
            lambda r: (
                edit(r, "infra/k8s/posts-db.yaml", f"/{topology.services['posts'].database}\n", "/blog\n"),
                edit(
                    r,
                    "infra/k8s/posts-db.yaml",
                    f"- name: POSTGRES_DB\n              value: {topology.services['posts'].database}\n",
                    "- name: POSTGRES_DB\n              value: blog\n",
                ),
            ),
            [rf"Deployment/posts-depl.*DATABASE_URL's database 'blog' is not the topology's database of posts '{topology.services['posts'].database}'"],
        ),
        Case(
            "a Deployment on another port than the topology's (containerPort, PORT and its policy changed together)",
            "refs",
            lambda r: (
                edit(r, "infra/k8s/comments-depl.yaml", f"containerPort: {port['comments']}\n", f"containerPort: {wrong}\n"),
                edit(r, "infra/k8s/comments-depl.yaml", f'value: "{port["comments"]}"\n', f'value: "{wrong}"\n'),
                edit(r, "infra/k8s/network-policies.yaml", f"port: {port['comments']}\n", f"port: {wrong}\n"),
            ),
            [
                rf"Deployment/comments-depl.*containerPort \[{wrong}\], but the topology's port of comments is {port['comments']}",
                rf"Deployment/comments-depl.*PORT={wrong}, but the topology's port of comments is {port['comments']}",
            ],
        ),
        Case(
            "a Service on another port than the topology's (the Ingress and the bus's URL changed with it)",
            "refs",
            lambda r: (
                edit(r, "infra/k8s/comments-depl.yaml", f"      port: {port['comments']}\n      targetPort:", f"      port: {wrong}\n      targetPort:"),
                edit(r, "infra/k8s/ingress-srv.yaml", f"number: {port['comments']}\n", f"number: {wrong}\n"),
                edit(r, "infra/k8s/event-bus-depl.yaml", sub("comments"), sub("comments", wrong)),
            ),
            [
                rf"Service/{srv['comments']}.*port \[{wrong}\], but the topology's port of comments is {port['comments']}",
                rf"EVENT_BUS_SUBSCRIBERS\[comments\]=.* is not the topology's Service of comments \({srv['comments']}:{port['comments']}\)",
            ],
        ),
        Case(
            "the client's Service on another port than the topology's (the Ingress changed with it)",
            "refs",
            lambda r: (
                edit(r, "infra/k8s/client-depl.yaml", f"      port: {port['client']}\n      targetPort:", f"      port: {wrong}\n      targetPort:"),
                edit(r, "infra/k8s/ingress-srv.yaml", f"number: {port['client']}\n", f"number: {wrong}\n"),
            ),
            [rf"Service/{srv['client']}.*port \[{wrong}\], but the topology's port of client is {port['client']}"],
        ),
        Case(
            "the client's image on another port than the topology's (EXPOSE and nginx's listen)",
            "refs",
            lambda r: (
                edit(r, "client/Dockerfile", f"EXPOSE {port['client']}\n", f"EXPOSE {wrong}\n"),
                edit(r, "client/nginx.conf", f"listen {port['client']};", f"listen {wrong};"),
            ),
            [
                rf"client/Dockerfile: EXPOSE {wrong}, but the topology's client port is {port['client']}",
                rf"client/nginx.conf: nginx listens on \['{wrong}'\], but the topology's client port is {port['client']}",
            ],
        ),
        Case(
            "a subscriber URL naming no Service port",
            "refs",
            lambda r: edit(r, "infra/k8s/event-bus-depl.yaml", sub("query"), sub("query", wrong)),
            [re.escape(f"EVENT_BUS_SUBSCRIBERS[query]='http://{srv['query']}:{wrong}/events' names {srv['query']}:{wrong}, which is no Service port")],
        ),
        Case(
            "the services' EVENT_BUS_URL naming a Service that is not the bus",
            "refs",
            lambda r: edit(
                r,
                "infra/k8s/microblog-config.yaml",
                f"EVENT_BUS_URL: http://{srv['event-bus']}:{port['event-bus']}\n",
                f"EVENT_BUS_URL: http://{srv['query']}:{port['query']}\n",
            ),
            [
                rf"Deployment/posts-depl.*EVENT_BUS_URL='http://{srv['query']}:{port['query']}' is not the topology's "
                rf"Service of the bus, event-bus \({srv['event-bus']}:{port['event-bus']}\)"
            ],
        ),
        Case(
            "a subscriber that consumes no events (posts has no POST /events)",
            "refs",
            lambda r: edit(r, "infra/k8s/event-bus-depl.yaml", f"    {sub('comments')},", f"    {sub('posts')},{sub('comments')},"),
            [r"EVENT_BUS_SUBSCRIBERS names \['comments', 'moderation', 'posts', 'query'\], but the services that consume events"],
        ),
        Case(
            "a consumer of the topology left out of EVENT_BUS_SUBSCRIBERS",
            "refs",
            lambda r: edit(r, "infra/k8s/event-bus-depl.yaml", f",{sub('moderation')}", ""),
            [
                r"EVENT_BUS_SUBSCRIBERS names \['comments', 'query'\], but the services that consume events "
                r"\(consumesEvents in the topology\) are \['comments', 'moderation', 'query'\]"
            ],
        ),
        Case(
            "a topology that says posts consumes events, which its code does not",
            "refs",
            lambda r: None,
            [r"the topology .* says posts consumes events \(consumesEvents: true\), but no source in posts/src calls start_consumer\("],
            topology_edit=lambda t: service_of(t, "posts").update(consumesEvents=True),
        ),
        Case(
            "a topology that says query consumes no events, which its code does",
            "refs",
            lambda r: None,
            [r"the topology .* says query consumes no events \(consumesEvents: false\), but query/src calls start_consumer\("],
            topology_edit=lambda t: service_of(t, "query").update(consumesEvents=False),
        ),
        Case(
            "a service that the manifests and the Dockerfile still have, missing from the topology",
            "refs",
            lambda r: None,
            [
                r"Deployment/moderation-depl.*runs nothing the topology .* knows",
                r"Dockerfile: stage moderation is a service image .*, but the topology has no service moderation",
                r"Dockerfile: the `cargo build` \(-p \.\.\.\) lists .*not in the topology: moderation\)",
                r"Dockerfile: the `cargo chef cook` \(-p \.\.\.\) lists .*not in the topology: moderation\)",
            ],
            topology_edit=lambda t: t.update(services=[s for s in t["services"] if s["name"] != "moderation"]),
        ),
        Case(
            "a topology route that the Ingress sends elsewhere",
            "refs",
            lambda r: None,
            [rf"/posts/create is routed to {srv['posts']}, expected {srv['query']}"],
            topology_edit=lambda t: next(x for x in t["routes"] if x["path"] == "/posts/create").update(service=srv["query"]),
        ),
        Case(
            "a service's stage missing from the Dockerfile",
            "refs",
            lambda r: drop_stage(r, "Dockerfile", "moderation"),
            [r"Dockerfile: no stage moderation, but moderation is a service of the topology"],
        ),
        Case(
            "a service left out of the Dockerfile's cargo build",
            "refs",
            lambda r: edit(r, "Dockerfile", "-p query -p event-bus; \\", "-p event-bus; \\"),
            [r"Dockerfile: the `cargo build` \(-p \.\.\.\) lists .*\(missing: query;"],
        ),
        Case(
            "the Dockerfile's cook compiling the whole workspace, not the services",
            "refs",
            lambda r: edit(r, "Dockerfile", "recipe.json \\\n        -p posts -p comments -p moderation -p query -p event-bus\n", "recipe.json\n"),
            [r"Dockerfile: the `cargo chef cook` \(-p \.\.\.\) lists \[\]"],
        ),
        Case(
            "a builder on a newer Debian than the runtime",
            "refs",
            lambda r: edit(r, "Dockerfile", "FROM gcr.io/distroless/cc-debian13", "FROM gcr.io/distroless/cc-debian12"),
            [r"Dockerfile: the builder rust:\S+-trixie .* and the runtime .*cc-debian12.* are not one Debian release"],
        ),
        Case(
            "a service left out of the binaries the Dockerfile collects",
            "refs",
            lambda r: edit(r, "Dockerfile", " query event-bus; do", " event-bus; do"),
            [r"Dockerfile: the `for bin in` loop lists .*\(missing: query;"],
        ),
        Case(
            "a service stage in the Dockerfile for no service of the topology",
            "refs",
            lambda r: (r / "Dockerfile").write_text(
                (r / "Dockerfile").read_text()
                + '\nFROM runtime AS search\nCOPY --from=build /out/search /usr/local/bin/search\nENTRYPOINT ["/usr/local/bin/search"]\n'
            ),
            [r"Dockerfile: stage search is a service image .*, but the topology has no service search"],
        ),
        Case(
            "a service stage that starts another service's binary",
            "refs",
            lambda r: edit(r, "Dockerfile", 'ENTRYPOINT ["/usr/local/bin/query"]', 'ENTRYPOINT ["/usr/local/bin/posts"]'),
            [r"Dockerfile: stage query's ENTRYPOINT .* does not run the binary query"],
        ),
        Case(
            "a port written into the root Dockerfile again",
            "refs",
            lambda r: edit(r, "Dockerfile", "/usr/local/bin/posts\n", f"/usr/local/bin/posts\nEXPOSE {port['posts']}\n"),
            [rf"Dockerfile: stage posts has EXPOSE {port['posts']}: the root Dockerfile declares no ports"],
        ),
        Case(
            "a NetworkPolicy selecting nothing",
            "refs",
            lambda r: edit(r, "infra/k8s/network-policies.yaml", "      app: moderation\n  policyTypes", "      app: moderator\n  policyTypes"),
            # (moderation is still reached by metrics-allow-monitoring, so no "no policy" error)
            [r"NetworkPolicy/moderation-allow.*podSelector .*'moderator'.* selects no pod template"],
        ),
        Case(
            "a Deployment no NetworkPolicy lets anything reach",
            "refs",
            lambda r: (
                edit(r, "infra/k8s/network-policies.yaml", "      app: moderation\n  policyTypes", "      app: moderator\n  policyTypes"),
                edit(r, "infra/k8s/network-policies.yaml", "values: [posts, comments, query, moderation, event-bus]", "values: [posts, comments, query, event-bus]"),
            ),
            [r"Deployment/moderation-depl.*no NetworkPolicy allows any traffic"],
        ),
        Case(
            "a manifest file the kustomization (so skaffold) leaves out",
            "refs",
            lambda r: edit(r, "infra/k8s/kustomization.yaml", "  - network-policies.yaml\n", ""),
            [r"NetworkPolicy/default-deny-ingress \(infra/k8s/network-policies.yaml\): not deployed by skaffold.yaml: infra/k8s/kustomization.yaml does not list network-policies.yaml"],
        ),
        Case(
            "a workspace member left out of the Docker build context",
            "refs",
            lambda r: edit(r, ".dockerignore", "!loadtest/\n", ""),
            [r"workspace member loadtest/ is not allowed into the build context"],
        ),
        Case(
            "containers without limits, as root, writable root fs, no readiness probe",
            "checkov",
            broken_policies,
            [
                r"CKV_K8S_11 failed for Deployment\.default\.posts-depl",  # CPU limits
                r"CKV_K8S_13 failed for Deployment\.default\.posts-depl",  # memory limits
                r"CKV_K8S_23 failed for Deployment\.default\.comments-depl",  # root containers
                r"CKV_K8S_22 failed for Deployment\.default\.query-depl",  # read-only root fs
                r"CKV_K8S_9 failed for Deployment\.default\.client-depl",  # readiness probe
            ],
        ),
        Case(
            "a writable root filesystem in the prod overlay's backup, seen only in its rendering",
            "checkov",
            lambda r: edit(r, "infra/overlays/prod/event-bus-backup.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"),
            [r"checkov CKV_K8S_22 failed for CronJob\.microblog\.event-bus-backup \(infra/overlays/prod \(rendered\)\)"],
        ),
        Case(
            "a checkov skip without its reason",
            "checkov",
            unjustified_skip,
            [r"skip #\d+ \(CKV_DOCKER_2\): a skip needs its reason written out", r"CKV_DOCKER_2 failed for Dockerfile"],
        ),
        Case(
            "a Dockerfile with a :latest base and unpinned apt-get install",
            "hadolint",
            lambda r: (r / "Dockerfile").write_text(
                (r / "Dockerfile").read_text()
                + "\nFROM debian:latest AS extra\nRUN apt-get update && apt-get install -y curl\n"
            ),
            [r"DL3007", r"DL3008"],
        ),
        Case(
            "a skaffold.yaml with an unknown field",
            "skaffold",
            lambda r: edit(r, "skaffold.yaml", "    useBuildkit: true\n", "    useBuildkit: true\n    useBuildKit: true\n"),
            [r"at build/local: Additional properties are not allowed \('useBuildKit' was unexpected\)"],
        ),
        Case(
            "a skaffold.yaml with a wrong type",
            "skaffold",
            lambda r: edit(r, "skaffold.yaml", "    concurrency: 1\n", "    concurrency: one\n"),
            [r"at build/local/concurrency: 'one' is not of type 'integer'"],
        ),
        Case(
            "a prod overlay that deploys the dev Secrets, one replica of query, no Pod Security label",
            "overlays",
            lambda r: (
                edit(r, "infra/overlays/prod/kustomization.yaml", "  - patch: |-\n      $patch: delete\n      apiVersion: v1\n      kind: Secret\n      metadata:\n        name: event-bus-token\n", ""),
                edit(r, "infra/overlays/prod/kustomization.yaml", "  - name: query-depl\n    count: 2\n", "  - name: query-depl\n    count: 1\n"),
                edit(r, "infra/overlays/prod/namespace.yaml", "    pod-security.kubernetes.io/enforce: restricted\n", ""),
            ),
            [
                r"the prod overlay deploys a Secret from git",
                r"Deployment/query-depl .*runs fewer than two replicas in prod",
                r"its Namespace does not enforce the Pod Security restricted profile",
            ],
        ),
        Case(
            "a prod overlay without the bus's backup",
            "overlays",
            lambda r: edit(r, "infra/overlays/prod/kustomization.yaml", "  - event-bus-backup.yaml\n", ""),
            [r"no CronJob pg_dumps the bus's database into a volume the overlay claims"],
        ),
        Case(
            "a gateway overlay whose HTTPRoutes break the CRD schema (a misspelt field, an unknown match type)",
            "overlays",
            lambda r: (
                edit(r, GATEWAY_ROUTES, "  hostnames:\n    - posts.com\n  rules:\n    - matches:\n        - path:\n            type: Exact\n", "  hostname:\n    - posts.com\n  rules:\n    - matches:\n        - path:\n            type: Exact\n"),
                edit(r, GATEWAY_ROUTES, "type: PathPrefix\n            value: /posts\n", "type: Prefix\n            value: /posts\n"),
            ),
            [
                r"HTTPRoute/posts .*invalid against the HTTPRoute CRD schema at spec: Additional properties are not allowed \('hostname' was unexpected\)",
                r"HTTPRoute/query .*invalid against the HTTPRoute CRD schema at spec.rules.0.matches.0.path.type: 'Prefix' is not one of",
            ],
        ),
        Case(
            "a gateway overlay with a route to a wrong port, a route to a missing Gateway, a Gateway of a missing class",
            "overlays",
            lambda r: (
                edit(r, GATEWAY_ROUTES, f"- name: {srv['query']}\n          port: {port['query']}\n", f"- name: {srv['query']}\n          port: {wrong}\n"),
                edit(r, GATEWAY_ROUTES, "  parentRefs:\n    - name: microblog-gateway\n  hostnames:\n    - posts.com\n  rules:\n    - matches:\n        - path:\n            type: PathPrefix\n            value: /\n", "  parentRefs:\n    - name: microblog-gw\n  hostnames:\n    - posts.com\n  rules:\n    - matches:\n        - path:\n            type: PathPrefix\n            value: /\n"),
                edit(r, "infra/overlays/gateway/gateway.yaml", "gatewayClassName: microblog\n", "gatewayClassName: envoy\n"),
            ),
            [
                rf"HTTPRoute/query .*backend {srv['query']}:{wrong} is not a port of Service {srv['query']}",
                r"HTTPRoute/client .*parentRef Gateway default/microblog-gw does not exist",
                r"Gateway/microblog-gateway .*gatewayClassName 'envoy' is no GatewayClass of this rendering",
            ],
        ),
        Case(
            "a gateway overlay that leaves query unrouted and lets only ingress-nginx into the public services",
            "overlays",
            lambda r: (
                edit(r, GATEWAY_ROUTES, f"- name: {srv['query']}\n          port: {port['query']}\n", f"- name: {srv['client']}\n          port: {port['client']}\n"),
                edit(r, "infra/overlays/gateway/kustomization.yaml", "kubernetes.io/metadata.name: envoy-gateway-system", "kubernetes.io/metadata.name: ingress-nginx", count=4),
            ),
            [
                rf"infra/overlays/gateway .*no backend of the HTTPRoutes is {srv['query']}, which the topology's routes need",
                r"Deployment/posts-depl .*behind the HTTPRoutes, but no NetworkPolicy admits their proxies' namespace envoy-gateway-system",
                r"Deployment/client-depl .*a NetworkPolicy admits ingress-nginx, the namespace of no front door of this rendering",
            ],
        ),
        Case(
            "a prod rendering whose Namespace lacks the labels every resource carries",
            "overlays",
            lambda r: edit(r, "infra/overlays/prod/namespace.yaml", "    app.kubernetes.io/name: microblog\n", ""),
            [r"Namespace/microblog \(infra/overlays/prod \(rendered\)\): label app.kubernetes.io/name missing"],
        ),
        Case(
            "an overlay skaffold has no profile for",
            "overlays",
            lambda r: edit(r, "skaffold.yaml", "  - name: prod\n", "  - name: production\n"),
            [r"skaffold.yaml: no profile prod deploying \[infra/overlays/prod\]"],
        ),
    ]


# Topologies checks.py must refuse to work with: (what is wrong, the edit, the error).
BAD_TOPOLOGIES: list[tuple[str, Callable[[dict], None], str]] = [
    (
        "two services on one port",
        lambda t: service_of(t, "query").update(port=service_of(t, "posts")["port"]),
        r"query and posts have the same port",
    ),
    (
        "a route to a Service the topology does not have",
        lambda t: t["routes"].append({"path": "/search", "service": "search-srv"}),
        r"/search goes to search-srv, which is no Service of the topology",
    ),
    (
        "a service without its port",
        lambda t: service_of(t, "comments").pop("port"),
        r"'port' missing",
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(checks.HERE.parent.parent))
    parser.add_argument("--topology", required=True, metavar="FILE", help="as for checks.py")
    args = parser.parse_args()
    source = Path(args.root).resolve()
    try:
        topology = checks.load_topology(Path(args.topology))
        topology_data = json.loads(Path(args.topology).read_text())
    except checks.TopologyError as exc:
        print(f"test_checks.py: the topology {args.topology}: {exc}", file=sys.stderr)
        return 2
    passed, failed = 0, 0

    def outcome(ok: bool, name: str, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {name}")
        else:
            failed += 1
            print(f"FAIL {name}\n     {detail}".rstrip())

    with tempfile.TemporaryDirectory(prefix="check-k8s-selftest-") as tmp:

        def edited_topology(name: str, change: Callable[[dict], None]) -> Path:
            data = copy.deepcopy(topology_data)
            change(data)
            path = Path(tmp) / f"{name}-topology.json"
            path.write_text(json.dumps(data, indent=2))
            return path

        pristine = Path(tmp) / "pristine"
        copy_tree(source, pristine, topology)
        started = time.monotonic()
        results = checks.run_checks(pristine, topology)
        problems = [f"{name}: {e}" for name, errors in results.items() for e in errors]
        outcome(not problems, f"the unbroken copy passes every check ({time.monotonic() - started:.1f}s)", "\n     ".join(problems))

        for i, case in enumerate(cases(topology)):
            root = Path(tmp) / f"case{i}"
            shutil.copytree(pristine, root)
            case_topology = topology
            try:
                case.breakage(root)
                if case.topology_edit is not None:
                    case_topology = checks.load_topology(edited_topology(f"case{i}", case.topology_edit))
            except (AssertionError, StopIteration, KeyError, checks.TopologyError) as exc:
                outcome(False, f"{case.check}: {case.name}", f"the breakage did not apply: {exc}")
                continue
            errors = checks.run_checks(root, case_topology, [case.check])[case.check]
            missing = [p for p in case.expected if not any(re.search(p, e) for e in errors)]
            if not errors:
                outcome(False, f"{case.check}: {case.name}", "the check passed on the broken copy")
            elif missing:
                outcome(
                    False,
                    f"{case.check}: {case.name}",
                    f"failed, but not for the expected reason(s) {missing}; it said:\n     "
                    + "\n     ".join(errors),
                )
            else:
                outcome(True, f"{case.check} fails on {case.name}")
            shutil.rmtree(root)

        for name, change, expected in BAD_TOPOLOGIES:
            try:
                path = edited_topology("bad", change)
            except (KeyError, StopIteration) as exc:
                outcome(False, f"topology: {name}", f"the breakage did not apply: {exc!r}")
                continue
            try:
                checks.load_topology(path)
            except checks.TopologyError as exc:
                if re.search(expected, str(exc)):
                    outcome(True, f"the topology is refused with {name}")
                else:
                    outcome(False, f"topology: {name}", f"refused, but not for the expected reason {expected!r}: {exc}")
            else:
                outcome(False, f"topology: {name}", "the topology was accepted")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
