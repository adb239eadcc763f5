//! What docs/ says is true of the binaries: every Castwork flag the go-livepeer flag map
//! names is a flag of the binary (and subcommand) its row names, in that binary's
//! `--help`.

mod common;

use std::process::Command;

use common::*;

/// The `--help` text of `binary` with `subcommands`.
fn help(binary: &str, subcommands: &[&str]) -> String {
    let out = Command::new(bin(binary))
        .args(subcommands)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{binary} {subcommands:?} --help: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `help` lists `flag`.
fn lists(help: &str, flag: &str) -> bool {
    help.lines()
        .any(|l| l.split([' ', ',', '=']).any(|w| w == flag))
}

#[test]
fn every_flag_the_go_livepeer_map_names_is_a_flag_of_the_binary_its_row_names() {
    let doc = std::fs::read_to_string(workspace().join("docs/migrate-from-go-livepeer.md"))
        .expect("the guide is there");
    let helps: Vec<(&str, String)> = vec![
        ("orchestrator", help("orchestrator", &[])),
        (
            "orchestrator chain register",
            help("orchestrator", &["chain", "register"]),
        ),
        ("worker", help("worker", &[])),
        ("broadcaster", help("broadcaster", &[])),
        ("broadcaster push", help("broadcaster", &["push"])),
        ("broadcaster serve", help("broadcaster", &["serve"])),
    ];
    let help_of = |ctx: &str| &helps.iter().find(|(c, _)| *c == ctx).unwrap().1;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        let line = line.replace("\\|", "/");
        let cells: Vec<&str> = line.split('|').collect();
        // | go-livepeer | Castwork | notes |: the Castwork cell.
        let Some(cell) = cells.get(2) else { continue };
        let mut ctx: Option<String> = None;
        // Only what is in code spans: prose ("HTTP push") names no binary.
        let code: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        for word in code.iter().flat_map(|c| c.split(char::is_whitespace)) {
            match (word, ctx.as_deref()) {
                ("orchestrator" | "worker" | "broadcaster", _) => ctx = Some(word.to_string()),
                (
                    "push" | "serve",
                    Some("broadcaster" | "broadcaster push" | "broadcaster serve"),
                )
                | ("push" | "serve", None) => ctx = Some(format!("broadcaster {word}")),
                ("register", Some("orchestrator")) => {
                    ctx = Some("orchestrator chain register".into())
                }
                _ => {}
            }
            let flag = word.trim_end_matches(['.', '/']);
            let named = flag.len() > 2
                && flag[2..]
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-');
            if !flag.starts_with("--") || !named || flag == "--flag-name" {
                continue;
            }
            checked += 1;
            let ok = match &ctx {
                Some(c) => lists(help_of(c), flag),
                None => helps.iter().any(|(_, h)| lists(h, flag)),
            };
            if !ok {
                wrong.push(format!(
                    "{flag} ({}) in: {cell}",
                    ctx.as_deref().unwrap_or("any")
                ));
            }
        }
    }
    assert!(
        checked >= 40,
        "only {checked} flags found: is the table there?"
    );
    assert!(
        wrong.is_empty(),
        "flags that are not there:\n{}",
        wrong.join("\n")
    );
}
