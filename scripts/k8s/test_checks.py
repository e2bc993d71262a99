#!/usr/bin/env python3
"""Self-test of checks.py: each check must fail on a deliberately broken copy.

Copies what the checks read (manifests, Dockerfiles, skaffold.yaml, the Rust sources
the env check greps, the skip lists) into a temporary directory, proves that the
unbroken copy passes every check, then applies one breakage at a time and asserts
that the check meant to catch it fails, naming the problem.

    test_checks.py [--root DIR]
"""

from __future__ import annotations

import argparse
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

COPIED = [
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
    *[f"{service}/src" for service in checks.SERVICE_ENV],
]


def copy_tree(src_root: Path, dst_root: Path) -> None:
    for rel in COPIED:
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


@dataclass
class Case:
    name: str
    check: str
    breakage: Callable[[Path], None]
    # Each must appear in one of the check's error messages (regular expressions).
    expected: list[str]


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


CASES = [
    Case(
        "an unknown field in a Deployment (a typo) is rejected by the strict schema",
        "schema",
        lambda r: edit(r, "infra/k8s/posts-depl.yaml", "  replicas: 1\n", "  replicas: 1\n  replica: 2\n"),
        [r"Deployment/posts-depl.*Additional properties are not allowed \('replica' was unexpected\)"],
    ),
    Case(
        "a wrong type (a port as a string) is rejected by the schema",
        "schema",
        lambda r: edit(r, "infra/k8s/comments-depl.yaml", "containerPort: 4001", 'containerPort: "4001"'),
        [r"Deployment/comments-depl.*containerPort: '4001' is not of type 'integer'"],
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
            "            backend:\n              service:\n                name: event-bus-srv\n"
            "                port:\n                  number: 4005\n          - path: /posts/create\n",
        ),
        [r"/events is routed to event-bus-srv, expected client-srv"],
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
        "an env var newly read in the code, which the checker's table does not know",
        "refs",
        lambda r: edit(
            r,
            "moderation/src/lib.rs",
            '.optional("MODERATION_BLOCKLIST")',
            '.optional("MODERATION_BLOCKLIST").or(env.optional("MODERATION_ALLOWLIST"))',
        ),
        [r"moderation/src/lib.rs: reads MODERATION_ALLOWLIST, but SERVICE_ENV\['moderation'\]"],
    ),
    Case(
        "an env var read through a const in the shared crate, unknown to the table",
        "refs",
        lambda r: edit(
            r,
            "common/src/config.rs",
            'const NAME: &str = "EVENT_BUS_SUBSCRIBERS";',
            'const NAME: &str = "EVENT_BUS_SUBSCRIBER_LIST";',
        ),
        [r"common/src/config.rs: reads EVENT_BUS_SUBSCRIBER_LIST, which no service lists"],
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
        "a subscriber URL naming no Service port",
        "refs",
        lambda r: edit(r, "infra/k8s/event-bus-depl.yaml", "http://query-srv:4002/events", "http://query-srv:4020/events"),
        [r"EVENT_BUS_SUBSCRIBERS\[query\]='http://query-srv:4020/events' names query-srv:4020, which is no Service port"],
    ),
    Case(
        "a subscriber that consumes no events (posts has no POST /events)",
        "refs",
        lambda r: edit(r, "infra/k8s/event-bus-depl.yaml", "    comments=http://comments-srv:4001/events,", "    posts=http://posts-clusterip-srv:4000/events,comments=http://comments-srv:4001/events,"),
        [r"EVENT_BUS_SUBSCRIBERS names \['comments', 'moderation', 'posts', 'query'\], but the services that consume events"],
    ),
    Case(
        "a NetworkPolicy selecting nothing",
        "refs",
        lambda r: edit(r, "infra/k8s/network-policies.yaml", "      app: moderation\n  policyTypes", "      app: moderator\n  policyTypes"),
        [r"NetworkPolicy/moderation-allow.*podSelector .*'moderator'.* selects no pod template", r"Deployment/moderation-depl.*no NetworkPolicy allows any traffic"],
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
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(checks.HERE.parent.parent))
    args = parser.parse_args()
    source = Path(args.root).resolve()
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
        pristine = Path(tmp) / "pristine"
        copy_tree(source, pristine)
        started = time.monotonic()
        results = checks.run_checks(pristine)
        problems = [f"{name}: {e}" for name, errors in results.items() for e in errors]
        outcome(not problems, f"the unbroken copy passes every check ({time.monotonic() - started:.1f}s)", "\n     ".join(problems))

        for i, case in enumerate(CASES):
            root = Path(tmp) / f"case{i}"
            shutil.copytree(pristine, root)
            try:
                case.breakage(root)
            except (AssertionError, StopIteration) as exc:
                outcome(False, f"{case.check}: {case.name}", f"the breakage did not apply: {exc}")
                continue
            errors = checks.run_checks(root, [case.check])[case.check]
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

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
