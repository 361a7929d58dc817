//! The API server's audit log read as RBAC sees a request: who, where, which
//! resource, which verb. The RBAC test derives the chart's roles from it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What RBAC checks of a request, and what a rule grants: a verb on a
/// resource (`resource` or `resource/subresource`) of an API group (`""`
/// for the core group), cluster-wide (`scope` [`CLUSTER`]) or in the
/// namespace `scope`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub scope: String,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// The scope of a cluster-wide request or grant.
pub const CLUSTER: &str = "cluster";

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} in {}",
            self.verb,
            self.resource,
            group_name(&self.group),
            self.scope
        )
    }
}

/// An API group as a table shows it: `""` for the core group.
fn group_name(group: &str) -> String {
    if group.is_empty() {
        "\"\"".to_string()
    } else {
        group.to_string()
    }
}

/// One request of the audit log.
#[derive(Clone, Debug)]
pub struct Request {
    pub access: Access,
    /// The object's name, for requests on one object.
    pub name: Option<String>,
    /// The response's status code.
    pub code: u64,
}

/// Every resource request that `username` made, once per audit entry that
/// carries a response (`ResponseComplete`; `ResponseStarted` too, for
/// watches still open). Non-resource requests (`/version`, discovery) are
/// left out: RBAC roles of the chart do not grant them.
pub fn requests_of(text: &str, username: &str) -> Vec<Request> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["user"]["username"] == username)
        .filter_map(|entry| {
            let object = entry.get("objectRef")?;
            let code = entry["responseStatus"]["code"].as_u64()?;
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let mut resource = text(&object["resource"]);
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let scope = match object["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => ns.to_string(),
                _ => CLUSTER.to_string(),
            };
            Some(Request {
                access: Access {
                    scope,
                    group: text(&object["apiGroup"]),
                    resource,
                    verb: text(&entry["verb"]),
                },
                name: object["name"].as_str().map(str::to_string),
                code,
            })
        })
        .collect()
}

/// A table of accesses, one line per (scope, API group, resource) with its
/// verbs, scopes renamed by `rename` (a namespace to a placeholder); the
/// format of `charts/gpufleet/rbac-used.txt`.
pub fn table(accesses: &BTreeSet<Access>, rename: impl Fn(&str) -> String) -> String {
    let mut rows: BTreeMap<(String, String, String), BTreeSet<&str>> = BTreeMap::new();
    for a in accesses {
        rows.entry((rename(&a.scope), group_name(&a.group), a.resource.clone()))
            .or_default()
            .insert(&a.verb);
    }
    let lines: Vec<[String; 4]> = rows
        .into_iter()
        .map(|((scope, group, resource), verbs)| {
            let verbs: Vec<&str> = verbs.into_iter().collect();
            [scope, group, resource, verbs.join(" ")]
        })
        .collect();
    let header = [
        "# scope".to_string(),
        "apiGroup".into(),
        "resource".into(),
        "verbs".into(),
    ];
    let width = |i: usize| {
        lines
            .iter()
            .chain([&header])
            .map(|l| l[i].len())
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    std::iter::once(&header)
        .chain(&lines)
        .map(|l| {
            format!(
                "{:w0$}  {:w1$}  {:w2$}  {}\n",
                l[0],
                l[1],
                l[2],
                l[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )
        })
        .collect()
}

/// The accesses of a table written by [`table`], scopes renamed back by
/// `rename`; comment lines (`#`) and blank lines are skipped.
pub fn parse_table(text: &str, rename: impl Fn(&str) -> String) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() >= 4, "a row without verbs: {line:?}");
        for verb in &fields[3..] {
            out.insert(Access {
                scope: rename(fields[0]),
                group: fields[1].trim_matches('"').to_string(),
                resource: fields[2].to_string(),
                verb: verb.to_string(),
            });
        }
    }
    out
}
