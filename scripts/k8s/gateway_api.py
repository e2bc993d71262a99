"""Gateway API objects, checked offline: against the CRDs' own OpenAPI v3 schemas
(vendored in schemas/gateway-api, standard channel), made strict, and for the
references between them that no schema sees (gatewayClassName, parentRefs, backendRefs).

kubernetes-validate knows only built-in kinds. A CRD's schema is what the API server
enforces for its kind, with two differences this check closes or states:
  - the API server prunes unknown fields silently; here an object schema that lists its
    properties (and neither preserves unknown fields nor says what else it takes)
    rejects every other field, as kubernetes-validate's strict mode does;
  - the CEL rules (x-kubernetes-validations) are not evaluated.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import jsonschema
import yaml

GROUP = "gateway.networking.k8s.io"
CRD_DIR = Path(__file__).resolve().parent / "schemas" / "gateway-api"

# What a manifest's metadata may say (the API server fills in the rest). A DNS
# subdomain name, string labels and annotations.
METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

Report = Callable[[str], None]  # takes one error message


def is_gateway_api(doc: dict) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] == GROUP


def strict(schema: dict) -> dict:
    """The schema with additionalProperties: false on every object that lists its
    properties and leaves the rest unsaid."""
    schema = dict(schema)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    if isinstance(schema.get("properties"), dict):
        schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            schema[key] = [strict(s) for s in schema[key]]
    return schema


@functools.cache
def validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a validator, for every served version of every vendored CRD."""
    found = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = METADATA_SCHEMA
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            schema = strict(schema)
            # OpenAPI v3.0's schema objects are JSON Schema draft 4 with extensions.
            jsonschema.Draft4Validator.check_schema(schema)
            found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = jsonschema.Draft4Validator(schema)
    return found


def validate(doc: dict, where: str, error: Report) -> None:
    """One Gateway API object against its CRD's schema, strictly."""
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    validator = validators().get(key)
    if validator is None:
        known = ", ".join(f"{v} {k}" for v, k in sorted(validators()))
        error(f"{where}: no schema for {key[0]} {key[1]} in {CRD_DIR.name}/ (the standard channel serves {known})")
        return
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        error(f"{where}: invalid against the {key[1]} CRD schema at {path}: {err.message}")


def check_refs(index, error: Report) -> None:
    """Each Gateway names an existing GatewayClass; each HTTPRoute attaches to an
    existing Gateway listener that admits it and sends every request to an existing
    Service port of its own namespace. `index` is one rendering (checks.Index)."""
    resources, find, service_port = index.resources, index.find, index.service_port
    for gw in (r for r in resources if r.kind == "Gateway"):
        class_name = (gw.doc.get("spec") or {}).get("gatewayClassName")
        if not any(r.kind == "GatewayClass" and r.name == class_name for r in resources):
            error(f"{gw}: gatewayClassName {class_name!r} is no GatewayClass of this rendering")
    for route in (r for r in resources if r.kind == "HTTPRoute"):
        spec = route.doc.get("spec") or {}
        parents = spec.get("parentRefs") or []
        if not parents:
            error(f"{route}: no parentRefs: it attaches to no Gateway and routes nothing")
        for ref in parents:
            check_parent(route, ref, spec.get("hostnames") or [], find, error)
        for rule in spec.get("rules") or []:
            backends = rule.get("backendRefs") or []
            if not backends:
                error(f"{route}: a rule without backendRefs answers every request it matches with a 500")
            for ref in backends:
                name, port = ref.get("name"), ref.get("port")
                if (ref.get("group") or "") != "" or (ref.get("kind") or "Service") != "Service":
                    error(f"{route}: backend {name!r} is not a core Service")
                elif (ref.get("namespace") or route.namespace) != route.namespace:
                    error(f"{route}: backend {name!r} is in another namespace (a ReferenceGrant would have to allow it)")
                elif find("Service", name, route.namespace) is None:
                    error(f"{route}: backend Service {name!r} does not exist")
                elif not service_port(name, port, route.namespace):
                    error(f"{route}: backend {name}:{port} is not a port of Service {name}")


def check_parent(route, ref: dict, hostnames: list[str], find: Callable, error: Report) -> None:
    if (ref.get("group") or GROUP) != GROUP or (ref.get("kind") or "Gateway") != "Gateway":
        error(f"{route}: parentRef {ref} is not a Gateway")
        return
    namespace = ref.get("namespace") or route.namespace
    gw = find("Gateway", ref.get("name"), namespace)
    if gw is None:
        error(f"{route}: parentRef Gateway {namespace}/{ref.get('name')} does not exist")
        return
    listeners = [
        listener
        for listener in (gw.doc.get("spec") or {}).get("listeners") or []
        if ref.get("sectionName") in (None, listener.get("name")) and ref.get("port") in (None, listener.get("port"))
    ]
    admitting = [
        listener
        for listener in listeners
        if listener.get("protocol") in ("HTTP", "HTTPS")
        and admits(listener, gw.namespace, route.namespace)
        and hostnames_intersect(listener.get("hostname"), hostnames)
    ]
    if not admitting:
        error(f"{route}: no listener of {gw} takes it (sectionName, port, protocol, allowedRoutes or hostname)")


def admits(listener: dict, gateway_namespace: str, route_namespace: str) -> bool:
    allowed = listener.get("allowedRoutes") or {}
    kinds = allowed.get("kinds")
    if kinds and not any(k.get("kind") == "HTTPRoute" and (k.get("group") or GROUP) == GROUP for k in kinds):
        return False
    frm = (allowed.get("namespaces") or {}).get("from") or "Same"
    # A Selector needs the route namespace's labels, which a rendering does not have.
    return frm == "All" or (frm == "Same" and gateway_namespace == route_namespace) or frm == "Selector"


def hostnames_intersect(listener_host: str | None, route_hosts: list[str]) -> bool:
    """Gateway API's hostname intersection: either side unset matches everything; a
    wildcard `*.example.com` matches any host of one or more labels before the suffix."""
    if not listener_host or not route_hosts:
        return True

    def covers(pattern: str, host: str) -> bool:
        return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1)

    return any(covers(listener_host, h) or covers(h, listener_host) for h in route_hosts)
