//! The Ingress manifest, read and applied the way ingress-nginx applies it with
//! `use-regex: "true"`: every path is a case-insensitive regex anchored at the start of
//! the URI, tried longest path first, and the first match wins. Local routing is the
//! manifest's routing: a manifest ingress-nginx would route wrongly routes wrongly here.

use regex::Regex;

use crate::ratelimit::Limits;
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    pub port: u16,
}

#[derive(Debug)]
struct Path {
    pattern: String,
    regex: Regex,
    backend: Backend,
}

#[derive(Debug)]
struct Rule {
    /// `None` matches every host, as a rule without `host` does in Kubernetes.
    host: Option<String>,
    paths: Vec<Path>,
}

#[derive(Debug)]
pub struct Ingress {
    pub name: String,
    rules: Vec<Rule>,
    /// The rate limits its annotations set, applied to every path as ingress-nginx does.
    pub limits: Limits,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct IngressError {
    file: String,
    reason: String,
}

impl Ingress {
    pub fn load(file: &std::path::Path) -> Result<Self, IngressError> {
        let text = std::fs::read_to_string(file).map_err(|e| IngressError {
            file: file.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| IngressError {
            file: file.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let documents = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
        let mut ingresses = documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some("Ingress"));
        let ingress = ingresses.next().ok_or("no `kind: Ingress` document")?;
        if ingresses.next().is_some() {
            return Err("more than one Ingress; the gateway applies exactly one".into());
        }
        if ingress["apiVersion"].as_str() != Some("networking.k8s.io/v1") {
            return Err("apiVersion must be networking.k8s.io/v1".into());
        }
        let name = ingress["metadata"]["name"]
            .as_str()
            .ok_or("metadata.name is missing")?
            .to_owned();
        let regex_paths =
            ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"].as_str()
                == Some("true");
        if !regex_paths {
            return Err(
                "the paths are regular expressions: set the annotation nginx.ingress.kubernetes.io/use-regex: \"true\"".into(),
            );
        }
        let rules = ingress["spec"]["rules"]
            .as_vec()
            .ok_or("spec.rules is missing")?
            .iter()
            .enumerate()
            .map(|(i, rule)| parse_rule(rule).map_err(|e| format!("spec.rules[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            return Err("spec.rules is empty".into());
        }
        let limits = Limits::from_annotations(&ingress["metadata"]["annotations"])?;
        Ok(Self {
            name,
            rules,
            limits,
        })
    }

    /// The backend for a request, as ingress-nginx would pick it. A `Host` that no rule
    /// names (localhost, 127.0.0.1) is served by the first rule, so the local run answers
    /// on any address as well as on the manifest's own host.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Backend> {
        let host = host.map(crate::routes::host_name);
        let rule = self
            .rules
            .iter()
            .find(|r| r.host.is_some() && r.host == host)
            .or_else(|| self.rules.iter().find(|r| r.host.is_none()))
            .or_else(|| self.rules.first())?;
        rule.paths
            .iter()
            .find(|p| p.regex.is_match(path))
            .map(|p| &p.backend)
    }

    /// Every backend the manifest names, for checking each one runs locally.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.rules
            .iter()
            .flat_map(|r| r.paths.iter().map(|p| (p.pattern.as_str(), &p.backend)))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| r.host.as_deref())
    }
}

fn parse_rule(rule: &Yaml) -> Result<Rule, String> {
    let host = match &rule["host"] {
        Yaml::BadValue => None,
        value => Some(
            value
                .as_str()
                .ok_or("host is not a string")?
                .to_ascii_lowercase(),
        ),
    };
    let mut paths = rule["http"]["paths"]
        .as_vec()
        .ok_or("http.paths is missing")?
        .iter()
        .enumerate()
        .map(|(i, p)| parse_path(p).map_err(|e| format!("http.paths[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    // ingress-nginx writes the locations longest path first, and between paths of one
    // length in descending string order; nginx takes the first regex location that
    // matches.
    paths.sort_by(|a, b| {
        b.pattern
            .len()
            .cmp(&a.pattern.len())
            .then_with(|| b.pattern.cmp(&a.pattern))
    });
    Ok(Rule { host, paths })
}

fn parse_path(path: &Yaml) -> Result<Path, String> {
    let pattern = path["path"].as_str().ok_or("path is missing")?.to_owned();
    match path["pathType"].as_str() {
        Some("ImplementationSpecific") => {}
        Some(other) => {
            return Err(format!(
                "pathType {other} on {pattern:?}: ingress-nginx rejects regex paths unless pathType is ImplementationSpecific"
            ))
        }
        None => return Err(format!("pathType is missing on {pattern:?}")),
    }
    let regex = Regex::new(&format!("(?i)^{pattern}"))
        .map_err(|e| format!("path {pattern:?} is not a valid regex: {e}"))?;
    let service = &path["backend"]["service"];
    let name = service["name"]
        .as_str()
        .ok_or_else(|| format!("backend.service.name is missing on {pattern:?}"))?;
    let port = service["port"]["number"]
        .as_i64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("backend.service.port.number is missing on {pattern:?}"))?;
    Ok(Path {
        pattern,
        regex,
        backend: Backend {
            service: name.to_owned(),
            port,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn service(ingress: &Ingress, host: Option<&str>, path: &str) -> String {
        ingress
            .route(host, path)
            .map(|b| format!("{}:{}", b.service, b.port))
            .unwrap_or_else(|| "none".into())
    }

    #[test]
    fn matching_is_case_insensitive_and_longest_path_first() {
        let ingress = Ingress::parse(&manifest(&[
            ("/?(.*)", "client", 1),
            ("/api/v1", "short", 2),
            ("/api/v1/users", "long", 3),
            ("/a", "tiny", 4),
        ]))
        .unwrap();
        assert_eq!(service(&ingress, None, "/API/V1/users/3"), "long:3");
        assert_eq!(service(&ingress, None, "/api/v1/x"), "short:2");
        assert_eq!(service(&ingress, None, "/zzz"), "client:1");
        // As in ingress-nginx: the longer catch-all is tried before the shorter "/a".
        assert_eq!(service(&ingress, None, "/a"), "client:1");
    }

    #[test]
    fn paths_of_one_length_are_tried_in_descending_string_order() {
        // Whatever their order in the manifest: "/b.*" sorts after "/a.*", so is tried first.
        for paths in [
            [("/a.*", "a", 1), ("/b.*", "b", 2)],
            [("/b.*", "b", 2), ("/a.*", "a", 1)],
        ] {
            let ingress = Ingress::parse(&manifest(&paths)).unwrap();
            assert_eq!(service(&ingress, None, "/b"), "b:2");
            assert_eq!(service(&ingress, None, "/a"), "a:1");
        }
        let overlapping =
            Ingress::parse(&manifest(&[("/x/a", "first", 1), ("/x/.", "second", 2)])).unwrap();
        // "/x/a" > "/x/." as strings, so "/x/a" wins for "/x/a" even though both match.
        assert_eq!(service(&overlapping, None, "/x/a"), "first:1");
    }

    #[test]
    fn a_broken_manifest_is_refused_with_the_reason() {
        let cases = [
            ("kind: Service\n", "no `kind: Ingress`"),
            (
                &manifest(&[("/posts/(", "x", 1)]) as &str,
                "not a valid regex",
            ),
            (
                &manifest(&[("/p", "x", 1)]).replace("ImplementationSpecific", "Prefix"),
                "pathType Prefix",
            ),
            (
                &manifest(&[("/p", "x", 1)]).replace("\"true\"", "\"false\""),
                "use-regex",
            ),
            (
                &manifest(&[("/p", "x", 1)]).replace("number: 1", "name: http"),
                "port.number",
            ),
        ];
        for (text, reason) in cases {
            let error = Ingress::parse(text).unwrap_err();
            assert!(error.contains(reason), "{error:?} should say {reason:?}");
        }
    }

    fn manifest(paths: &[(&str, &str, u16)]) -> String {
        let mut text = String::from(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: t\n  annotations:\n    nginx.ingress.kubernetes.io/use-regex: \"true\"\nspec:\n  rules:\n    - http:\n        paths:\n",
        );
        for (path, name, port) in paths {
            text.push_str(&format!(
                "          - path: {path}\n            pathType: ImplementationSpecific\n            backend:\n              service:\n                name: {name}\n                port:\n                  number: {port}\n"
            ));
        }
        text
    }
}
