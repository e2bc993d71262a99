//! The gateway overlay's HTTPRoutes, read and applied the way Gateway API says, with
//! Envoy Gateway's choices where the spec leaves them to the implementation: a request
//! is matched against the routes of the most specific hostname that names its host, and
//! among those the first match in precedence order wins. Precedence: an Exact path, then
//! a RegularExpression (Envoy Gateway's order; the expression must match the whole
//! path), then the longest PathPrefix; within one type the longer value; then a method
//! match; then the route's name in alphabetical order (every route here is created at
//! once, so the spec's "oldest first" never decides); then the rule, then the match, in
//! the order written. A PathPrefix matches whole path segments: `/posts` matches `/posts`
//! and `/posts/1`, never `/postsx`. Paths and methods are case-sensitive.
//!
//! What the spec allows but this file does not apply (header or query matches, filters,
//! weighted backends) is refused with the reason, so that the local run never routes
//! differently from the cluster without saying so.

use std::path::Path as FilePath;

use regex::Regex;
use yaml_rust2::{Yaml, YamlLoader};

use crate::ingress::Backend;

const API_VERSION: &str = "gateway.networking.k8s.io/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathType {
    Exact,
    RegularExpression,
    PathPrefix,
}

#[derive(Debug, Clone)]
struct PathMatch {
    kind: PathType,
    value: String,
    /// The whole-path expression, for RegularExpression only.
    regex: Option<Regex>,
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathType::Exact => path == self.value,
            PathType::RegularExpression => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
            PathType::PathPrefix => {
                let prefix = self.value.trim_end_matches('/');
                prefix.is_empty()
                    || path == prefix
                    || path
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// One match of one rule of one route, with what decides its precedence.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathMatch,
    method: Option<String>,
    route: String,
    rule: usize,
    index: usize,
    backend: Backend,
}

impl Candidate {
    fn precedence(&self) -> impl Ord + '_ {
        (
            self.path.kind,
            std::cmp::Reverse(self.path.value.len()),
            self.method.is_none(),
            &self.route,
            self.rule,
            self.index,
        )
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.path.matches(path)
    }
}

/// The candidates of the routes that share one hostname (`None`: the routes that name
/// no hostname, which take any host), in precedence order.
#[derive(Debug)]
struct HostGroup {
    hostname: Option<String>,
    candidates: Vec<Candidate>,
}

#[derive(Debug)]
pub struct HttpRoutes {
    groups: Vec<HostGroup>,
}

#[derive(Debug, thiserror::Error)]
#[error("{dir}: {reason}")]
pub struct HttpRouteError {
    dir: String,
    reason: String,
}

impl HttpRoutes {
    /// The HTTPRoutes (and the Gateway they attach to) of every manifest in an overlay
    /// directory.
    pub fn load(dir: &FilePath) -> Result<Self, HttpRouteError> {
        let source = dir.display().to_string();
        let error = |reason: String| HttpRouteError {
            dir: source.clone(),
            reason,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| error(e.to_string()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml")
                    && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            })
            .collect();
        files.sort();
        let mut text = String::new();
        for file in files {
            let content = std::fs::read_to_string(&file)
                .map_err(|e| error(format!("{}: {e}", file.display())))?;
            text.push_str("\n---\n");
            text.push_str(&content);
        }
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let documents = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        let gateways: Vec<&str> = documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Gateway"))
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        let mut groups: Vec<HostGroup> = Vec::new();
        let mut routes = 0;
        for route in documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some("HTTPRoute"))
        {
            let name = route["metadata"]["name"]
                .as_str()
                .ok_or("an HTTPRoute without metadata.name")?;
            parse_route(route, name, &gateways, &mut groups)
                .map_err(|e| format!("HTTPRoute {name}: {e}"))?;
            routes += 1;
        }
        if routes == 0 {
            return Err("no `kind: HTTPRoute` document".into());
        }
        for group in &mut groups {
            group
                .candidates
                .sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        }
        Ok(Self { groups })
    }

    /// The backend for a request. A `Host` that no route names (localhost, 127.0.0.1) is
    /// served as the first hostname the routes name, as the Ingress's local routing does,
    /// so the local run answers on any address as well as on the manifests' own host.
    pub fn route(&self, host: Option<&str>, method: &str, path: &str) -> Option<&Backend> {
        let host = host.map(crate::routes::host_name);
        let group = host
            .as_deref()
            .and_then(|h| self.group_for(h))
            .or_else(|| self.hosts().next().and_then(|h| self.group_for(h)))
            .or_else(|| self.groups.iter().find(|g| g.hostname.is_none()))?;
        group
            .candidates
            .iter()
            .find(|c| c.matches(method, path))
            .map(|c| &c.backend)
    }

    /// The most specific hostname that names `host`: the host itself, then the longest
    /// wildcard, then the routes that name none.
    fn group_for(&self, host: &str) -> Option<&HostGroup> {
        let exact = self
            .groups
            .iter()
            .find(|g| g.hostname.as_deref() == Some(host));
        let wildcard = || {
            self.groups
                .iter()
                .filter(|g| {
                    g.hostname
                        .as_deref()
                        .and_then(|h| h.strip_prefix('*'))
                        .is_some_and(|suffix| host.ends_with(suffix) && host.len() > suffix.len())
                })
                .max_by_key(|g| g.hostname.as_ref().map_or(0, String::len))
        };
        exact
            .or_else(wildcard)
            .or_else(|| self.groups.iter().find(|g| g.hostname.is_none()))
    }

    /// Every backend the routes name, for checking each one runs locally.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.groups
            .iter()
            .flat_map(|g| g.candidates.iter())
            .map(|c| (c.path.value.as_str(), &c.backend))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .filter_map(|g| g.hostname.as_deref())
            .filter(|h| !h.starts_with('*'))
    }
}

fn parse_route(
    route: &Yaml,
    name: &str,
    gateways: &[&str],
    groups: &mut Vec<HostGroup>,
) -> Result<(), String> {
    if route["apiVersion"].as_str() != Some(API_VERSION) {
        return Err(format!("apiVersion must be {API_VERSION}"));
    }
    let spec = &route["spec"];
    let parents = spec["parentRefs"]
        .as_vec()
        .ok_or("spec.parentRefs is missing")?;
    for parent in parents {
        let gateway = parent["name"].as_str().ok_or("a parentRef without name")?;
        if !gateways.contains(&gateway) {
            return Err(format!(
                "parentRef {gateway:?} is no Gateway of the overlay (found {gateways:?})"
            ));
        }
    }
    let hostnames: Vec<Option<String>> = match spec["hostnames"].as_vec() {
        None => vec![None],
        Some(list) if list.is_empty() => vec![None],
        Some(list) => list
            .iter()
            .map(|h| {
                h.as_str()
                    .map(|h| Some(h.to_ascii_lowercase()))
                    .ok_or("a hostname is not a string")
            })
            .collect::<Result<_, _>>()?,
    };
    let rules = spec["rules"].as_vec().ok_or("spec.rules is missing")?;
    let mut candidates = Vec::new();
    for (rule_index, rule) in rules.iter().enumerate() {
        let at = |e: String| format!("spec.rules[{rule_index}]: {e}");
        let backend = parse_backend(rule).map_err(at)?;
        if !rule["filters"].is_badvalue() {
            return Err(at(
                "filters are not applied by devstack; the routes use none".into(),
            ));
        }
        let matches = match rule["matches"].as_vec() {
            Some(list) if !list.is_empty() => list.clone(),
            // A rule without matches matches every request, as PathPrefix `/` does.
            _ => vec![Yaml::Hash(Default::default())],
        };
        for (index, m) in matches.iter().enumerate() {
            let (path, method) =
                parse_match(m).map_err(|e| at(format!("matches[{index}]: {e}")))?;
            candidates.push(Candidate {
                path,
                method,
                route: name.to_owned(),
                rule: rule_index,
                index,
                backend: backend.clone(),
            });
        }
    }
    for hostname in hostnames {
        let group = match groups.iter().position(|g| g.hostname == hostname) {
            Some(i) => i,
            None => {
                groups.push(HostGroup {
                    hostname,
                    candidates: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[group].candidates.extend(candidates.iter().cloned());
    }
    Ok(())
}

/// A match's path and method; header and query matches are refused.
fn parse_match(m: &Yaml) -> Result<(PathMatch, Option<String>), String> {
    for unsupported in ["headers", "queryParams"] {
        if !m[unsupported].is_badvalue() {
            return Err(format!(
                "{unsupported} matches are not applied by devstack; the routes use none"
            ));
        }
    }
    // The spec's defaults: a match without a path is PathPrefix `/`.
    let kind = m["path"]["type"].as_str().unwrap_or("PathPrefix");
    let value = m["path"]["value"].as_str().unwrap_or("/");
    let method = match &m["method"] {
        Yaml::BadValue => None,
        value => Some(value.as_str().ok_or("method is not a string")?.to_owned()),
    };
    Ok((parse_path(kind, value)?, method))
}

fn parse_path(kind: &str, value: &str) -> Result<PathMatch, String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} does not start with /"));
    }
    let (kind, regex) = match kind {
        "Exact" => (PathType::Exact, None),
        "PathPrefix" => (PathType::PathPrefix, None),
        "RegularExpression" => {
            let regex = Regex::new(&format!("^(?:{value})$"))
                .map_err(|e| format!("path {value:?} is not a valid regex: {e}"))?;
            (PathType::RegularExpression, Some(regex))
        }
        other => {
            return Err(format!(
                "path type {other:?} is not a Gateway API path type"
            ))
        }
    };
    Ok(PathMatch {
        kind,
        value: value.to_owned(),
        regex,
    })
}

/// The rule's one backend: a Service with a port (weighted splits are refused).
fn parse_backend(rule: &Yaml) -> Result<Backend, String> {
    let refs = rule["backendRefs"]
        .as_vec()
        .ok_or("backendRefs is missing")?;
    let [backend] = refs.as_slice() else {
        return Err(format!(
            "{} backendRefs: devstack applies exactly one per rule",
            refs.len()
        ));
    };
    if backend["kind"].as_str().is_some_and(|k| k != "Service") {
        return Err("a backendRef that is not a Service".into());
    }
    let service = backend["name"]
        .as_str()
        .ok_or("a backendRef without name")?;
    let port = backend["port"]
        .as_i64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("backendRef {service}: port is missing"))?;
    Ok(Backend {
        service: service.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn service(routes: &HttpRoutes, host: Option<&str>, method: &str, path: &str) -> String {
        routes
            .route(host, method, path)
            .map(|b| format!("{}:{}", b.service, b.port))
            .unwrap_or_else(|| "none".into())
    }

    /// One rule: (path type, path value, method, backend service, port).
    type Rule<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16);
    /// One route: (name, hostnames, rules).
    type Route<'a> = (&'a str, &'a [&'a str], &'a [Rule<'a>]);

    fn manifest(routes: &[Route]) -> String {
        let mut text = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n",
        );
        for (name, hostnames, rules) in routes {
            text.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: {hostnames:?}\n  rules:\n"
            ));
            for (kind, value, method, service, port) in rules.iter() {
                let method = method.map_or(String::new(), |m| format!(", method: {m}"));
                text.push_str(&format!(
                    "    - matches: [{{path: {{type: {kind}, value: \"{value}\"}}{method}}}]\n      backendRefs: [{{name: {service}, port: {port}}}]\n"
                ));
            }
        }
        text
    }

    fn parse(routes: &[Route]) -> HttpRoutes {
        HttpRoutes::parse(&manifest(routes)).unwrap()
    }

    #[test]
    fn exact_beats_regular_expression_beats_the_longest_prefix() {
        let routes = parse(&[
            ("a", &[], &[("PathPrefix", "/", None, "root", 1)]),
            ("b", &[], &[("PathPrefix", "/api", None, "api", 2)]),
            ("c", &[], &[("PathPrefix", "/api/v1", None, "v1", 3)]),
            (
                "d",
                &[],
                &[("RegularExpression", "/api/.*", None, "regex", 4)],
            ),
            ("e", &[], &[("Exact", "/api/v1/x", None, "exact", 5)]),
        ]);
        assert_eq!(service(&routes, None, "GET", "/api/v1/x"), "exact:5");
        assert_eq!(service(&routes, None, "GET", "/api/v1/y"), "regex:4");
        // The expression matches the whole path only: /api itself is not /api/.*
        assert_eq!(service(&routes, None, "GET", "/api"), "api:2");
        assert_eq!(service(&routes, None, "GET", "/elsewhere"), "root:1");
    }

    #[test]
    fn a_prefix_matches_whole_segments_and_ignores_a_trailing_slash() {
        let routes = parse(&[
            ("a", &[], &[("PathPrefix", "/", None, "root", 1)]),
            ("b", &[], &[("PathPrefix", "/posts/", None, "posts", 2)]),
        ]);
        assert_eq!(service(&routes, None, "GET", "/posts"), "posts:2");
        assert_eq!(service(&routes, None, "GET", "/posts/"), "posts:2");
        assert_eq!(service(&routes, None, "GET", "/posts/1"), "posts:2");
        assert_eq!(service(&routes, None, "GET", "/postsx"), "root:1");
        // Paths are case-sensitive, unlike ingress-nginx's regex locations.
        assert_eq!(service(&routes, None, "GET", "/POSTS"), "root:1");
    }

    #[test]
    fn a_method_match_wins_a_tie_and_otherwise_the_route_name_then_the_rule() {
        let routes = parse(&[
            ("a", &[], &[("PathPrefix", "/x", None, "any", 1)]),
            ("b", &[], &[("PathPrefix", "/x", Some("POST"), "post", 2)]),
            ("z", &[], &[("Exact", "/y", None, "z", 3)]),
            (
                "m",
                &[],
                &[
                    ("Exact", "/y", None, "m1", 4),
                    ("Exact", "/y", None, "m2", 5),
                ],
            ),
        ]);
        assert_eq!(service(&routes, None, "POST", "/x"), "post:2");
        assert_eq!(service(&routes, None, "GET", "/x"), "any:1");
        // "m" sorts before "z"; within "m" the first rule wins.
        assert_eq!(service(&routes, None, "GET", "/y"), "m1:4");
    }

    #[test]
    fn the_most_specific_hostname_decides_which_routes_apply() {
        let routes = parse(&[
            (
                "a",
                &["posts.com"],
                &[("PathPrefix", "/", None, "exact", 1)],
            ),
            ("b", &["*.com"], &[("PathPrefix", "/", None, "wild", 2)]),
            ("c", &[], &[("PathPrefix", "/only-any", None, "any", 3)]),
        ]);
        assert_eq!(
            service(&routes, Some("posts.com:8080"), "GET", "/"),
            "exact:1"
        );
        assert_eq!(service(&routes, Some("www.com"), "GET", "/"), "wild:2");
        // Routes of a less specific hostname do not apply once a more specific one does.
        assert_eq!(
            service(&routes, Some("posts.com"), "GET", "/only-any"),
            "exact:1"
        );
        assert_eq!(
            service(&routes, Some("example.org"), "GET", "/only-any"),
            "any:3"
        );
        // No host at all: as the first hostname named.
        assert_eq!(service(&routes, None, "GET", "/"), "exact:1");
    }

    #[test]
    fn what_devstack_cannot_apply_is_refused_with_the_reason() {
        let base = manifest(&[("r", &[], &[("PathPrefix", "/", None, "s", 1)])]);
        let cases = [
            (base.replace("gw}", "other}"), "no Gateway of the overlay"),
            (
                base.replace("PathPrefix", "Prefix"),
                "not a Gateway API path type",
            ),
            (
                base.replace(
                    "value: \"/\"}",
                    "value: \"/\"}, headers: [{name: a, value: b}]",
                ),
                "headers matches",
            ),
            (
                base.replace(
                    "backendRefs: [{name: s, port: 1}]",
                    "backendRefs: [{name: s, port: 1}, {name: t, port: 2}]",
                ),
                "exactly one per rule",
            ),
            (base.replace(", port: 1", ""), "port is missing"),
            (
                base.replace("RegularExpression", "x").replace(
                    "type: PathPrefix, value: \"/\"",
                    "type: RegularExpression, value: \"/(\"",
                ),
                "not a valid regex",
            ),
            ("kind: Gateway\n".to_owned(), "no `kind: HTTPRoute`"),
        ];
        for (text, reason) in cases {
            let error = HttpRoutes::parse(&text).unwrap_err();
            assert!(error.contains(reason), "{error:?} should say {reason:?}");
        }
    }
}
