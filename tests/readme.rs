//! The README's examples are true: every ```yaml block passes `tollgate
//! check` (a block with a top-level `domain:` is an envoyproxy/ratelimit
//! rule file, checked as a rule directory; any other is a configuration
//! file). A block preceded by `<!-- not a whole file -->` is a fragment and
//! is skipped.

mod support;

use std::process::Command;

use support::process::{BIN, temp_dir};

const FRAGMENT: &str = "<!-- not a whole file -->";

/// Every ```yaml block of `text`: (line of its fence, text, is a fragment).
fn yaml_blocks(text: &str) -> Vec<(usize, String, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```yaml" {
            let fragment = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim() == FRAGMENT);
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            blocks.push((i + 1, lines[start..end].join("\n") + "\n", fragment));
            i = end;
        }
        i += 1;
    }
    blocks
}

#[test]
fn every_yaml_block_of_the_readme_passes_check() {
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
        .expect("README.md");
    let blocks = yaml_blocks(&readme);
    assert!(blocks.len() >= 4, "found {} yaml blocks", blocks.len());
    let dir = temp_dir("readme");
    let mut failed = Vec::new();
    for (line, text, fragment) in &blocks {
        if *fragment {
            continue;
        }
        let rule_file = text.lines().any(|l| l.starts_with("domain:"));
        let target = if rule_file {
            let rules = dir.join(format!("rules-{line}"));
            std::fs::create_dir_all(&rules).expect("rules dir");
            std::fs::write(rules.join("rules.yaml"), text).expect("write");
            rules
        } else {
            let file = dir.join(format!("config-{line}.yaml"));
            std::fs::write(&file, text).expect("write");
            file
        };
        let out = Command::new(BIN)
            .arg("check")
            .arg(&target)
            .output()
            .expect("tollgate check");
        if !out.status.success() {
            failed.push(format!(
                "README.md:{line}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn fragments_are_marked_and_found() {
    let text = "a\n\n<!-- not a whole file -->\n```yaml\nx: 1\n```\n```yaml\ny: 2\n```\n";
    let blocks = yaml_blocks(text);
    assert_eq!(
        blocks,
        vec![
            (4, "x: 1\n".to_owned(), true),
            (7, "y: 2\n".to_owned(), false)
        ]
    );
}
