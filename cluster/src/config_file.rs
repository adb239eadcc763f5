//! `--config FILE` (env `CASTWORK_CONFIG`): a binary's settings in TOML, every flag's long
//! name as a key (`amqp-url = "amqps://..."`, `slots = 2`), and a table per subcommand
//! (`[serve]`). Command-line flags override environment variables, which override the
//! file: each key only sets its flag's environment variable where the environment has
//! none. A key that is not a flag is an error, as is a file that does not parse.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Command;

/// The environment variable that names the config file.
pub const CONFIG_ENV: &str = "CASTWORK_CONFIG";

/// The file `--config` names on the command line (`--config FILE` or `--config=FILE`), or
/// else `CASTWORK_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

/// A TOML value as a flag's value: strings as they are, numbers and booleans written out,
/// arrays joined with commas.
fn flag_value(v: &toml_edit::Value) -> Option<String> {
    use toml_edit::Value as V;
    Some(match v {
        V::String(s) => s.value().clone(),
        V::Integer(i) => i.value().to_string(),
        V::Float(f) => f.value().to_string(),
        V::Boolean(b) => b.value().to_string(),
        V::Array(a) => a
            .iter()
            .map(flag_value)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    })
}

/// The (environment variable, value) pairs a table sets for `cmd`'s flags.
fn settings(
    cmd: &Command,
    table: &toml_edit::Table,
    place: &str,
    out: &mut Vec<(String, String)>,
    problems: &mut Vec<String>,
) {
    for (key, item) in table.iter() {
        if let Some(sub) = item.as_table() {
            match cmd.find_subcommand(key) {
                Some(c) => settings(c, sub, &format!("[{key}]"), out, problems),
                None => problems.push(format!("{place}: [{key}] is not a subcommand")),
            }
            continue;
        }
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key) && key != "config")
        else {
            let known: Vec<&str> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !["config", "help", "version"].contains(l))
                .collect();
            problems.push(format!(
                "{place}: {key:?} is not a flag here (the keys are: {})",
                known.join(", ")
            ));
            continue;
        };
        let Some(env) = arg.get_env() else {
            problems.push(format!("{place}: {key:?} cannot be set from a file"));
            continue;
        };
        match item.as_value().and_then(flag_value) {
            Some(v) => out.push((env.to_string_lossy().into_owned(), v)),
            None => problems.push(format!(
                "{place}: {key:?} must be a string, number, boolean or array"
            )),
        }
    }
}

/// Reads the config file, if one is named, and sets the environment variable of each flag
/// it gives that the environment does not already set. Call it before anything else runs
/// (before an async runtime starts threads): it changes the process's environment.
pub fn apply(cmd: &Command) -> Result<Option<PathBuf>, String> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(path) = config_path(&args) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("--config {}: not TOML: {e}", path.display()))?;
    let mut set = Vec::new();
    let mut problems = Vec::new();
    settings(
        cmd,
        doc.as_table(),
        &path.display().to_string(),
        &mut set,
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(format!("--config: {}", problems.join("; ")));
    }
    for (env, value) in set {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("amqp-url").long("amqp-url").env("T_AMQP_URL"))
            .arg(Arg::new("slots").long("slots").env("T_SLOTS"))
            .arg(Arg::new("noenv").long("noenv"))
            .arg(
                Arg::new("open")
                    .long("open")
                    .env("T_OPEN")
                    .action(ArgAction::SetTrue),
            )
            .subcommand(
                Command::new("serve").arg(Arg::new("http-addr").long("http-addr").env("T_HTTP")),
            )
    }

    fn read(text: &str) -> Result<Vec<(String, String)>, Vec<String>> {
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        let (mut out, mut problems) = (Vec::new(), Vec::new());
        settings(&cmd(), doc.as_table(), "f", &mut out, &mut problems);
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn keys_are_flag_names_and_tables_subcommands() {
        let got = read(
            "amqp-url = \"amqp://x\"\nslots = 2\nopen = true\n[serve]\nhttp-addr = \"0.0.0.0:1\"\n",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("T_AMQP_URL", "amqp://x"),
                ("T_SLOTS", "2"),
                ("T_OPEN", "true"),
                ("T_HTTP", "0.0.0.0:1"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn unknown_keys_and_tables_are_errors() {
        let e = read("amqp_url = \"x\"\n[push]\nx = 1\n").unwrap_err();
        assert!(e[0].contains("\"amqp_url\" is not a flag here"), "{e:?}");
        assert!(e[0].contains("amqp-url, slots"), "{e:?}");
        assert!(e[1].contains("[push] is not a subcommand"), "{e:?}");
        let e = read("noenv = 1\n").unwrap_err();
        assert!(e[0].contains("cannot be set from a file"), "{e:?}");
        // A key for a subcommand's flag at the top level is not that flag.
        assert!(read("http-addr = \"x\"\n").is_err());
    }

    #[test]
    fn the_command_line_names_the_file() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["b", "--slots", "2", "--config", "c.toml"])),
            Some(PathBuf::from("c.toml"))
        );
        assert_eq!(
            config_path(&args(&["b", "--config=d.toml"])),
            Some(PathBuf::from("d.toml"))
        );
    }
}
