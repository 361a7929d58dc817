//! `gpufleet plan`: previews, without a cluster, the waves a batch would run
//! over a set of nodes, which nodes would fail the static checks and why, and
//! which domains would be held.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::schedule;
use gpufleet::api::{GpuPool, RolloutBatch};
use gpufleet::planner::NodeView;
use gpufleet::planner::preview::{Mismatch, Preview, preview};
use gpufleet::planner::schedule::project;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GpuPool, as YAML or JSON.
    #[arg(long, value_name = "FILE")]
    pool: PathBuf,
    /// The RolloutBatch, as YAML or JSON.
    #[arg(long, value_name = "FILE")]
    batch: PathBuf,
    /// The nodes, as YAML or JSON: a `kubectl get nodes -o yaml` dump (a List
    /// or NodeList), a sequence of Nodes, or a stream of Node documents.
    /// Repeat for several files; `-` reads standard input.
    #[arg(long, value_name = "FILE", required_unless_present = "trays")]
    nodes: Vec<PathBuf>,
    /// Instead of --nodes: this many healthy compute trays that match the
    /// pool and the batch, in NVL72 racks of the pool's domain size (the
    /// last one partial), the pool's GPU products taking turns by rack.
    #[arg(long, value_name = "N", conflicts_with = "nodes")]
    trays: Option<u32>,
    /// Project the rollout instead: run the planner in simulated time, every
    /// check passing, and show when each wave starts and ends, the power in
    /// use, the racks online and the energy.
    #[arg(long)]
    schedule: bool,
    /// With --schedule: how long one probe (burn-in) takes, e.g. 4h or 90m.
    #[arg(long, value_name = "DURATION", requires = "schedule")]
    probe_duration: Option<SignedDuration>,
    /// With --schedule: how long one rack test takes, e.g. 30m.
    #[arg(long, value_name = "DURATION", requires = "schedule")]
    rack_test_duration: Option<SignedDuration>,
    /// With --schedule: when the rollout starts (RFC 3339); now if unset.
    #[arg(long, value_name = "TIME", requires = "schedule")]
    start: Option<Timestamp>,
    /// How to print: a table for people, JSON, or (with --schedule) an SVG
    /// chart of power in use and racks online.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// A table for people, 80 columns wide.
    Table,
    /// JSON for machines.
    Json,
    /// With --schedule: an SVG chart.
    Svg,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pool: GpuPool = load_object(&args.pool, "GpuPool")?;
    check_pool(&args.pool, &pool)?;
    let batch: RolloutBatch = load_object(&args.batch, "RolloutBatch")?;
    check_batch(&args.batch, &batch)?;
    let mut nodes: Vec<NodeView> = match args.trays {
        Some(n) => schedule::trays(&pool, &batch, n),
        None => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for path in &args.nodes {
        for node in load_nodes(path)? {
            let view = NodeView::from(&node);
            if !seen.insert(view.name.to_string()) {
                bail!("{}: node {} appears more than once", name(path), view.name);
            }
            nodes.push(view);
        }
    }
    let text = if args.schedule {
        let timing = schedule::timing(&pool, args.probe_duration, args.rack_test_duration)?;
        let start = args.start.unwrap_or_else(Timestamp::now);
        let projected = project(&pool, &batch, nodes, start, timing, schedule::OPTIONS);
        match args.output {
            Output::Json => serde_json::to_string_pretty(&projected)? + "\n",
            Output::Svg => schedule::svg(&projected),
            Output::Table => gpufleet::view::safe(&schedule::table(&projected)).into_owned(),
        }
    } else {
        let preview = preview(&pool, &batch, &nodes);
        match args.output {
            Output::Json => serde_json::to_string_pretty(&preview)? + "\n",
            Output::Table => gpufleet::view::safe(&table(&preview)).into_owned(),
            Output::Svg => bail!("--output svg draws a schedule: add --schedule"),
        }
    };
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

// ---- Reading the files --------------------------------------------------

/// How a file names itself in messages.
fn name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// JSON when the file says so by its name or its first character; a JSON
/// parse that fails on syntax falls back to YAML (a YAML flow sequence also
/// starts with `[`).
fn looks_like_json(path: &Path, text: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with(['{', '['])
}

/// Deserializes one document, naming the file, the field's path and the line
/// in any error.
fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> anyhow::Result<T> {
    let file = name(path);
    if looks_like_json(path, text) {
        let by_name = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut de = serde_json::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Ok(value) => match de.end() {
                Ok(()) => return Ok(value),
                Err(e) if by_name => bail!("{file}: {e}"),
                Err(_) => {}
            },
            Err(e) if by_name || !e.inner().is_syntax() => bail!("{file}: {}", json_error(&e)),
            Err(_) => {}
        }
    }
    serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if path == "." {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}

/// Just the type of an object, to say early that a file holds the wrong kind.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    kind: Option<String>,
}

/// Loads a GpuPool or RolloutBatch from a file holding just that object.
fn load_object<T: DeserializeOwned>(path: &Path, kind: &str) -> anyhow::Result<T> {
    let text = read(path)?;
    if let Ok(TypeMeta { kind: Some(found) }) = parse::<TypeMeta>(path, &text)
        && found != kind
    {
        bail!("{}: kind: is {found}, expected {kind}", name(path));
    }
    parse(path, &text)
}

fn check_pool(path: &Path, pool: &GpuPool) -> anyhow::Result<()> {
    pool.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", name(path)))
}

fn check_batch(path: &Path, batch: &RolloutBatch) -> anyhow::Result<()> {
    batch
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", name(path)))
}

/// Loads every Node of a file: a List or NodeList, a sequence of Nodes, one
/// Node, or a YAML stream of any of these.
fn load_nodes(path: &Path) -> anyhow::Result<Vec<Node>> {
    let text = read(path)?;
    let file = name(path);
    let nodes: Vec<Node> = if looks_like_json(path, &text) && !text.trim().is_empty() {
        match parse::<Nodes>(path, &text) {
            Ok(Nodes(nodes)) => nodes,
            Err(e) => return Err(e),
        }
    } else {
        // Stop at the first error: after a syntax error the stream keeps
        // yielding documents that fail the same way.
        let mut nodes = Vec::new();
        for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            match Nodes::deserialize(doc) {
                Ok(Nodes(more)) => nodes.extend(more),
                Err(e) if i > 0 => bail!("{file}: document {}: {e}", i + 1),
                Err(e) => bail!("{file}: {e}"),
            }
        }
        nodes
    };
    if let Some(i) = nodes
        .iter()
        .position(|n| n.metadata.name.as_deref().unwrap_or_default().is_empty())
    {
        bail!(
            "{file}: node {} of the file: metadata.name is missing",
            i + 1
        );
    }
    Ok(nodes)
}

/// The Nodes of one document, whatever its shape.
struct Nodes(Vec<Node>);

/// A mapping: a List or NodeList (with `items`), or one Node.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    items: Option<Vec<Node>>,
    /// A Node's, or a List's (whose fields ObjectMeta also has).
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<NodeSpec>,
    #[serde(default)]
    status: Option<NodeStatus>,
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodesVisitor)
    }
}

struct NodesVisitor;

impl<'de> de::Visitor<'de> for NodesVisitor {
    type Value = Nodes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a List or NodeList of Nodes, a sequence of Nodes, or a Node")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Nodes, E> {
        Ok(Nodes(Vec::new()))
    }

    fn visit_none<E: de::Error>(self) -> Result<Nodes, E> {
        Ok(Nodes(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Nodes, A::Error> {
        let mut nodes = Vec::new();
        while let Some(node) = seq.next_element::<Node>()? {
            nodes.push(node);
        }
        Ok(Nodes(nodes))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nodes, A::Error> {
        let doc = Document::deserialize(de::value::MapAccessDeserializer::new(map))?;
        match (doc.items, doc.kind.as_deref()) {
            (Some(items), None | Some("List" | "NodeList")) => Ok(Nodes(items)),
            (None, None | Some("Node")) => {
                if let Some(version) = doc.api_version.filter(|v| v != "v1") {
                    return Err(de::Error::custom(format!(
                        "apiVersion: is {version}, expected v1 for a Node"
                    )));
                }
                Ok(Nodes(vec![Node {
                    metadata: doc.metadata.unwrap_or_default(),
                    spec: doc.spec,
                    status: doc.status,
                }]))
            }
            (_, Some(kind)) => Err(de::Error::custom(format!(
                "kind: is {kind}, expected Node, NodeList or List"
            ))),
        }
    }
}

// ---- The table ----------------------------------------------------------

const WIDTH: usize = 80;

/// The preview for people, at most 80 columns wide (long names excepted).
fn table(p: &Preview) -> String {
    let mut out = String::new();
    let s = &p.summary;
    let _ = writeln!(
        out,
        "Batch {} of pool {}: {} in {}, {}",
        p.batch,
        p.pool,
        count(s.members, "node"),
        count(s.domains, "domain"),
        count(s.waves, "wave")
    );
    let _ = writeln!(
        out,
        "GPUs online if every probe passes: {} of {}; {} rejected, {} held",
        s.gpus, s.gpus_requested, s.rejected, s.held_nodes
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "WAVE  TARGET  DOMAINS   NODES  REJECTED    HELD     GPUS  APPROVED"
    );
    for w in &p.waves {
        let _ = writeln!(
            out,
            "{:>4}  {:>6}  {:>7}  {:>6}  {:>8}  {:>6}  {:>7}  {}",
            w.index,
            w.target_nodes,
            w.domains.len(),
            w.nodes.len(),
            w.rejected,
            w.held,
            w.gpus,
            if w.approved { "yes" } else { "no" }
        );
    }

    let name_width = p
        .domains
        .iter()
        .map(|d| d.name.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(6, 44);
    let mut domains = p.domains.iter().peekable();
    for w in &p.waves {
        let _ = writeln!(
            out,
            "\nWave {}: {}, {}, {} GPUs{}",
            w.index,
            count(w.domains.len() as u32, "domain"),
            count(w.nodes.len() as u32, "node"),
            w.gpus,
            if w.approved {
                ""
            } else {
                " (waits for approval)"
            }
        );
        if w.domains.is_empty() {
            let _ = writeln!(
                out,
                "  (empty: the waves before it already reach its target)"
            );
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<name_width$}  {:>5}  {:>5}  NOTE",
            "DOMAIN", "NODES", "GPUS"
        );
        while let Some(d) = domains.next_if(|d| d.wave == w.index) {
            let mut note = Vec::new();
            if d.rejected > 0 {
                note.push(format!("{} rejected", d.rejected));
            }
            if d.held {
                note.push("held".to_string());
            }
            let row = format!(
                "  {:<name_width$}  {:>5}  {:>5}  {}",
                d.name,
                d.nodes,
                d.gpus,
                note.join(", ")
            );
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }

    if !p.rejected.is_empty() {
        let _ = writeln!(
            out,
            "\nRejected by the static checks: {}",
            count(p.rejected.len() as u32, "node")
        );
        for r in &p.rejected {
            let _ = writeln!(out, "  {} (wave {}, domain {})", r.node, r.wave, r.domain);
            wrap(&mut out, "      ", &r.reason, 6);
        }
    }
    if !p.held.is_empty() {
        let _ = writeln!(out, "\nHeld domains: {}", p.held.len());
        for h in &p.held {
            let _ = writeln!(
                out,
                "  {} (wave {}, {} held)",
                h.domain,
                h.wave,
                count(h.nodes.len() as u32, "node")
            );
            wrap(&mut out, "      ", &h.reason, 6);
        }
    }
    if !p.unmatched.is_empty() {
        let _ = writeln!(
            out,
            "\nNot in the batch: {}",
            count(p.unmatched.len() as u32, "node")
        );
        for (kind, what, named) in [
            (
                Mismatch::BatchOnly,
                "Batch's selector only (gpufleet ignores these; label them for the pool)",
                true,
            ),
            (Mismatch::Deleting, "Being deleted", true),
            (
                Mismatch::LostState,
                "Admitted, then lost the ready label (left in service; label them ready, or retry them)",
                true,
            ),
            (
                Mismatch::PoolOnly,
                "Pool's selector only (other batches)",
                false,
            ),
            (Mismatch::Neither, "Neither selector", false),
        ] {
            let nodes: Vec<&str> = p
                .unmatched
                .iter()
                .filter(|u| u.matches == kind)
                .map(|u| u.node.as_str())
                .collect();
            if nodes.is_empty() {
                continue;
            }
            let mut line = format!("{what}: {}", count(nodes.len() as u32, "node"));
            if named {
                line.push_str(": ");
                line.push_str(&bounded(&nodes));
            }
            wrap(&mut out, "  ", &line, 4);
        }
    }
    if !p.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for note in &p.notes {
            wrap(&mut out, "  - ", note, 4);
        }
    }
    out
}

/// "1 node", "2 nodes".
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Up to ten names, then how many more.
fn bounded(names: &[&str]) -> String {
    let shown = names
        .iter()
        .take(10)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(10) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Writes `text` after `first` on its first line and indented by `indent`
/// on the next, wrapped at [`WIDTH`] columns on spaces (a word longer than a
/// line stays whole).
fn wrap(out: &mut String, first: &str, text: &str, indent: usize) {
    let pad = " ".repeat(indent);
    let mut prefix = first;
    let mut line = String::new();
    for word in text.split_whitespace() {
        let len = prefix.chars().count() + line.chars().count() + 1 + word.chars().count();
        if !line.is_empty() && len > WIDTH {
            let _ = writeln!(out, "{prefix}{line}");
            prefix = &pad;
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{prefix}{line}");
    }
}
