//! `gpufleet plan` as a person runs it: the built binary on the example
//! files, as a table and as JSON, and on broken files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const POOL: &str = "examples/gpupool-gb200-east.yaml";
const BATCH: &str = "examples/rolloutbatch-row12.yaml";
/// A `kubectl get nodes -o yaml` dump: three racks, one tray short of a GPU.
const NODES: &str = "examples/nodes/row12-nodes.yaml";
/// A stream of Node documents: a rack with three bad trays (held) and a
/// tray labelled for the batch but not the pool.
const MORE_NODES: &str = "examples/nodes/row12-more-nodes.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn gpufleet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .current_dir(root())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gpufleet runs");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn plan(nodes: &str, extra: &[&str]) -> Output {
    let mut args = vec!["plan", "--pool", POOL, "--batch", BATCH, "--nodes", nodes];
    args.extend_from_slice(extra);
    gpufleet(&args, None)
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "gpufleet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&stdout(out)).expect("the output is JSON")
}

fn names(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// A file under the test's scratch folder.
fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_plan");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn example(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// Runs `plan` on a broken file and returns its error message, checking that
/// it failed and named the file.
fn error_of(args: &[&str], file: &Path) -> String {
    let out = gpufleet(args, None);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected a failure, got: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    assert!(
        stderr.contains(&file.display().to_string()),
        "the message names the file: {stderr}"
    );
    stderr
}

#[test]
fn the_table_shows_waves_domains_and_rejected_nodes_in_80_columns() {
    let text = stdout(&plan(NODES, &[]));
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }
    assert!(
        text.starts_with("Batch row12 of pool gb200-east: 54 nodes in 3 domains, 3 waves\n"),
        "{text}"
    );
    assert!(
        text.contains("GPUs online if every probe passes: 212 of 216"),
        "{text}"
    );
    assert!(
        text.contains("WAVE  TARGET  DOMAINS   NODES  REJECTED    HELD     GPUS  APPROVED"),
        "{text}"
    );
    assert!(text.contains("\n   1      18        1      18         1       0       68  yes\n"));
    assert!(text.contains("\n   3      54        2      36         0       0      144  no\n"));
    assert!(
        text.contains("Wave 1: 1 domain, 18 nodes, 68 GPUs\n"),
        "{text}"
    );
    assert!(text.contains("7f25f72c-175a-41c0-81be-ac192a5cc8c7.1     18     68  1 rejected"));
    assert!(text.contains(
        "  r12-rack02-tray07 (wave 1, domain 7f25f72c-175a-41c0-81be-ac192a5cc8c7.1)\n      allocatable nvidia.com/gpu is 3, pool expects 4\n"
    ), "{text}");
    assert!(text.contains("waves after 1 wait for approval"), "{text}");
}

#[test]
fn the_table_shows_held_domains_and_nodes_outside_the_pool() {
    let text = stdout(&plan(MORE_NODES, &["--output", "table"]));
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }
    assert!(text.contains("Held domains: 1\n  722c472e-4076-42ca-802e-72e1918627e2.1 (wave 1, 15 nodes held)\n      15 of 18 nodes can be healthy, 16 needed"), "{text}");
    assert!(text.contains("condition GpuXidError is True"), "{text}");
    assert!(
        text.contains("driver 570.86.15 is older than 570.133.20"),
        "{text}"
    );
    assert!(text.contains("r12-rack06-tray01"), "{text}");
    assert!(
        text.contains("wave 1 halts the rollout: 3 of its 18 nodes"),
        "{text}"
    );
}

#[test]
fn json_has_waves_rejected_held_and_a_summary() {
    let p = json(&plan(NODES, &["--output", "json"]));
    let waves = p["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 3);
    assert_eq!(waves[0]["index"], 1);
    assert_eq!(waves[0]["targetNodes"], 18);
    assert_eq!(
        names(&waves[0]["domains"]),
        ["7f25f72c-175a-41c0-81be-ac192a5cc8c7.1"]
    );
    let wave1 = names(&waves[0]["nodes"]);
    assert_eq!(wave1.len(), 18);
    assert!(wave1.iter().all(|n| n.starts_with("r12-rack02-")));
    assert_eq!(waves[0]["gpus"], 68);
    assert_eq!(waves[1]["nodes"].as_array().unwrap().len(), 0);
    assert_eq!(waves[2]["targetNodes"], 54);
    assert_eq!(waves[2]["gpus"], 144);
    assert_eq!(p["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(p["rejected"][0]["node"], "r12-rack02-tray07");
    assert_eq!(
        p["rejected"][0]["reason"],
        "allocatable nvidia.com/gpu is 3, pool expects 4"
    );
    assert_eq!(p["held"], Value::Array(vec![]));
    assert_eq!(p["summary"]["members"], 54);
    assert_eq!(p["summary"]["domains"], 3);
    assert_eq!(p["summary"]["gpus"], 212);
}

#[test]
fn json_of_a_document_stream_has_the_held_domain_and_the_stray_node() {
    let p = json(&plan(MORE_NODES, &["-o", "json"]));
    let held = &p["held"].as_array().unwrap()[0];
    assert_eq!(held["domain"], "722c472e-4076-42ca-802e-72e1918627e2.1");
    assert_eq!(held["healthy"], 15);
    assert_eq!(held["needed"], 16);
    assert_eq!(held["nodes"].as_array().unwrap().len(), 15);
    assert!(held["reason"].as_str().unwrap().contains("16 needed"));
    assert_eq!(p["unmatched"][0]["node"], "r12-rack06-tray01");
    assert_eq!(p["unmatched"][0]["matches"], "batchOnly");
    assert_eq!(p["summary"]["rejected"], 3);
}

#[test]
fn json_node_files_and_standard_input_give_the_same_preview() {
    let expected = json(&plan(NODES, &["-o", "json"]));
    let dump: Value = serde_norway::from_str(&example(NODES)).unwrap();
    // The List as JSON, as `kubectl get nodes -o json` prints it.
    let list = scratch("nodes.json", &serde_json::to_string_pretty(&dump).unwrap());
    assert_eq!(
        json(&plan(list.to_str().unwrap(), &["-o", "json"])),
        expected
    );
    // A plain sequence of Nodes, in a file without a telling name.
    let seq = scratch("nodes.txt", &dump["items"].to_string());
    assert_eq!(
        json(&plan(seq.to_str().unwrap(), &["-o", "json"])),
        expected
    );
    // A YAML sequence of Nodes from standard input.
    let yaml = serde_norway::to_string(&dump["items"]).unwrap();
    let out = gpufleet(
        &[
            "plan", "--pool", POOL, "--batch", BATCH, "--nodes", "-", "-o", "json",
        ],
        Some(&yaml),
    );
    assert_eq!(json(&out), expected);
}

#[test]
fn nodes_split_over_files_are_planned_together() {
    let p = json(&plan(NODES, &["--nodes", MORE_NODES, "-o", "json"]));
    assert_eq!(p["summary"]["members"], 54 + 36);
    // The same file twice names the same nodes twice.
    let out = plan(NODES, &["--nodes", NODES]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("appears more than once"));
}

#[test]
fn a_broken_node_list_names_the_file_the_item_and_the_field() {
    let text = example(NODES).replacen(
        "    labels:\n      beta.kubernetes.io/arch: arm64",
        "    labels: [arm64]\n    x:\n      beta.kubernetes.io/arch: arm64",
        1,
    );
    let file = scratch("bad-labels.yaml", &text);
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            file.to_str().unwrap(),
        ],
        &file,
    );
    assert!(err.contains("items[0].metadata.labels"), "{err}");
    assert!(err.contains("line 7"), "{err}");
}

#[test]
fn a_broken_node_in_a_stream_names_the_document_and_the_field() {
    // The stream starts with `---`, so the second Node is the third piece.
    let mut docs: Vec<String> = example(MORE_NODES)
        .split("---\n")
        .map(String::from)
        .collect();
    docs[2] = docs[2].replacen("nvidia.com/gpu: \"4\"", "nvidia.com/gpu: [4]", 1);
    let text = docs.join("---\n");
    let file = scratch("bad-stream.yaml", &text);
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            file.to_str().unwrap(),
        ],
        &file,
    );
    assert!(
        err.contains("document 2: status.allocatable.nvidia.com/gpu"),
        "{err}"
    );
}

#[test]
fn a_broken_json_node_file_names_the_field() {
    let file = scratch(
        "bad.json",
        r#"{"apiVersion": "v1", "kind": "NodeList", "items": [
            {"metadata": {"name": "a"}},
            {"metadata": {"name": "b"}, "spec": {"unschedulable": "yes"}}
        ]}"#,
    );
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            file.to_str().unwrap(),
        ],
        &file,
    );
    assert!(err.contains("items[1].spec.unschedulable"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn objects_of_the_wrong_kind_and_bad_syntax_are_named() {
    let pod = scratch(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
    );
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            pod.to_str().unwrap(),
        ],
        &pod,
    );
    assert!(err.contains("kind: is Pod"), "{err}");
    let broken = scratch("syntax.yaml", "- metadata: {name: a\n- metadata: {}\n");
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            broken.to_str().unwrap(),
        ],
        &broken,
    );
    assert!(err.contains("line 2"), "{err}");
    let err = error_of(
        &["plan", "--pool", BATCH, "--batch", BATCH, "--nodes", NODES],
        Path::new(BATCH),
    );
    assert!(
        err.contains("kind: is RolloutBatch, expected GpuPool"),
        "{err}"
    );
}

#[test]
fn a_broken_pool_or_batch_names_the_file_and_the_field() {
    let pool = scratch(
        "pool.yaml",
        &example(POOL).replace("gpusPerNode: 4", "gpusPerNode: four"),
    );
    let err = error_of(
        &[
            "plan",
            "--pool",
            pool.to_str().unwrap(),
            "--batch",
            BATCH,
            "--nodes",
            NODES,
        ],
        &pool,
    );
    assert!(err.contains("spec.hardware.gpusPerNode"), "{err}");
    let batch = scratch(
        "batch.yaml",
        &example(BATCH).replace("    - percent: 25", "    - percent: 25\n      nodes: 30"),
    );
    let err = error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            batch.to_str().unwrap(),
            "--nodes",
            NODES,
        ],
        &batch,
    );
    assert!(err.contains("spec.waves[1]"), "{err}");
    let missing = root().join("examples/nodes/no-such-file.yaml");
    error_of(
        &[
            "plan",
            "--pool",
            POOL,
            "--batch",
            BATCH,
            "--nodes",
            missing.to_str().unwrap(),
        ],
        &missing,
    );
}

/// `gpufleet crds | head -1`: a reader that stops early ends the command
/// quietly (SIGPIPE, as `ls` or `kubectl get`), never with a panic's
/// backtrace on stderr.
#[cfg(unix)]
#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A pipe whose reader is gone before the command writes.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_gpufleet"))
        .current_dir(root())
        .args(["crds"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("gpufleet runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}",
        output.status
    );
}

// ---- --schedule ----------------------------------------------------------

const COLOSSUS_POOL: &str = "examples/gpupool-colossus2.yaml";
const COLOSSUS_BATCH: &str = "examples/rolloutbatch-colossus2.yaml";

/// `gpufleet plan --schedule` of the Colossus 2 example over `trays`
/// made-up trays, with `extra` arguments.
fn schedule_args<'a>(trays: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "plan",
        "--schedule",
        "--pool",
        COLOSSUS_POOL,
        "--batch",
        COLOSSUS_BATCH,
        "--trays",
        trays,
    ];
    args.extend_from_slice(extra);
    args
}

/// The Colossus 2 example projected over `trays` made-up trays.
fn schedule(trays: &str, extra: &[&str]) -> Output {
    let mut timing = vec!["--probe-duration", "4h", "--start", "2026-12-07T00:00:00Z"];
    timing.extend_from_slice(extra);
    gpufleet(&schedule_args(trays, &timing), None)
}

#[test]
fn the_schedule_shows_waves_power_and_racks_in_80_columns() {
    let text = stdout(&schedule("3600", &[]));
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }
    assert!(
        text.starts_with("Batch colossus2 of pool colossus2, projected: 3,600 trays in 200 racks"),
        "{text}"
    );
    assert!(text.contains("Starts  2026-12-07 00:00Z"), "{text}");
    assert!(text.contains("\nReady   "), "{text}");
    assert!(text.contains("(budget 10.00 MW)"), "{text}");
    let waves: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("WAVE"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(waves.len(), 4, "{text}");
    assert!(
        waves[0].starts_with("   1       18  2026-12-07 00:00Z"),
        "{text}"
    );
    assert!(text.contains("Power under test (top: 10.00 MW)"), "{text}");
    assert!(text.contains("Racks online (top: 200)"), "{text}");
    assert!(text.contains('#'), "the charts are drawn: {text}");
}

#[test]
fn the_schedule_as_json_admits_every_tray_within_the_budget() {
    let v = json(&schedule("1800", &["-o", "json"]));
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["nodes"], 1800);
    assert_eq!(v["admitted"], 1800);
    assert_eq!(v["racks"], 100);
    assert_eq!(v["budgetWatts"], 10_000_000);
    assert!(v["peakWatts"].as_u64().unwrap() <= 10_000_000, "{v}");
    assert!(v["energyWattHours"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["waves"].as_array().unwrap().len(), 4);
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.last().unwrap()["racksOnline"], 100);
}

#[test]
fn the_schedule_as_svg_draws_both_panels() {
    let svg = stdout(&schedule("360", &["-o", "svg"]));
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.ends_with("</svg>\n"));
    assert_eq!(svg.matches("<path ").count(), 2, "power and racks");
    assert!(svg.contains("Power under test, MW"));
    assert!(svg.contains("Racks online"));
    assert!(svg.contains("stroke-dasharray"), "the budget line");
}

#[test]
fn a_schedule_with_checks_it_could_never_pass_is_refused_with_the_field() {
    let refused = |extra: &[&str]| {
        let out = gpufleet(&schedule_args("18", extra), None);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = refused(&["--probe-duration", "6h"]);
    assert!(e.contains("healthChecks.probe.timeoutSeconds"), "{e}");
    assert!(e.contains("raise the timeout"), "{e}");
    let e = refused(&[]);
    assert!(e.contains("--probe-duration"), "{e}");
    let e = refused(&["--probe-duration=-5m"]);
    assert!(e.contains("--probe-duration"), "{e}");
    let out = gpufleet(
        &[
            "plan", "--pool", POOL, "--batch", BATCH, "--nodes", NODES, "-o", "svg",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--schedule"));
}

#[test]
fn a_window_in_an_unknown_time_zone_is_refused_naming_the_field() {
    // In the batch: its windows sit beside the pool's.
    let batch = scratch(
        "batch-mars.yaml",
        &(example(COLOSSUS_BATCH)
            + "  windows: [{days: [Mon], start: \"08:00\", duration: 8h, timeZone: Mars/Olympus}]\n"),
    );
    let batch = batch.to_str().unwrap();
    let e = error_of(
        &[
            "plan",
            "--schedule",
            "--pool",
            COLOSSUS_POOL,
            "--batch",
            batch,
            "--trays",
            "18",
            "--probe-duration",
            "4h",
        ],
        Path::new(batch),
    );
    assert!(e.contains("spec.windows[0].timeZone"), "{e}");
    assert!(e.contains("Mars/Olympus"), "{e}");
}
