//! The planner is pure: nothing under `src/planner/` (nor the vocabulary it
//! speaks) reaches a client, the operator, a clock or randomness. Checked on
//! the source, so a new `use` that breaks the rule fails here by name.

use std::path::Path;

/// What a pure planner must not name: the client crate, the operator, the
/// async runtime, the clock, randomness, the environment and the file system.
const FORBIDDEN: &[&str] = &[
    "kube::",
    "use kube",
    "crate::operator",
    "tokio",
    "SystemTime",
    "Instant::now",
    "Timestamp::now",
    "rand::",
    "std::env",
    "std::fs",
    "std::net",
];

fn check(file: &Path, offenders: &mut Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    // Tests inside a file may use what they like.
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    for (n, line) in code.lines().enumerate() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for word in FORBIDDEN {
            if line.contains(word) {
                offenders.push(format!("{}:{}: {word}: {line}", file.display(), n + 1));
            }
        }
    }
}

#[test]
fn nothing_in_the_planner_imports_a_client_the_operator_or_a_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("src/planner"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.push(root.join("src/vocabulary.rs"));
    assert!(files.len() > 10, "the planner's files: {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        check(file, &mut offenders);
    }
    assert!(
        offenders.is_empty(),
        "the planner must stay pure:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_purity_check_catches_a_client() {
    let dir = std::env::temp_dir().join(format!("gpufleet-purity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.rs");
    std::fs::write(
        &file,
        "use kube::Client;\nfn f() { let _ = Timestamp::now(); }\n",
    )
    .unwrap();
    let mut offenders = Vec::new();
    check(&file, &mut offenders);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(offenders.len(), 3, "{offenders:?}");
}
