//! Configuration files for `peerlink router`, `rm` and `up`.
//!
//! A file is TOML with one `flag-name = value` per setting, named as the
//! command's long flag without its dashes (`mailbox-limit = 5000`,
//! `directory = "public"`, `backup = true`; `snake_case` names work too).
//! A flag on the command line overrides the file, and so does a flag's
//! environment variable; the file overrides the built-in default. A key
//! that names no flag of the command, a value of the wrong kind, or one the
//! flag refuses is an error that names the file, and nothing starts.
//!
//! `--print-config` prints the effective configuration — every setting, its
//! value and where it came from — in the same format, and exits.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

/// The configuration flags every configurable command has.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConfigArgs {
    /// Read settings from this TOML file: `flag-name = value`, one per flag
    /// of this command (without the leading dashes). Flags given on the
    /// command line, and their environment variables, override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration — each setting, its value and
    /// where it came from — as TOML that `--config` reads, and exit.
    #[arg(long)]
    print_config: bool,
}

impl ConfigArgs {
    /// Logs where the settings came from, when a file gave some.
    pub(crate) fn log(&self) {
        debug_assert!(!self.print_config, "--print-config exits before the command runs");
        if let Some(path) = &self.config {
            tracing::info!(file = %path.display(), "settings read from a configuration file (flags override it)");
        }
    }
}

/// The subcommands that read configuration files.
const CONFIGURABLE: [&str; 3] = ["router", "rm", "up"];

/// Settings that are not configuration.
const NOT_SETTINGS: [&str; 4] = ["config", "print_config", "help", "version"];

/// What the command line asks for: arguments to run with, or a
/// configuration to print.
pub(crate) enum Parsed<P> {
    /// Run with these arguments.
    Run(P),
    /// Print this text (the effective configuration) and exit.
    Print(String),
}

/// Parses `argv` as `P`, filling the settings of a configurable subcommand
/// that neither a flag nor the environment gave from its `--config` file.
pub(crate) fn parse<P: CommandFactory + FromArgMatches>(
    argv: Vec<OsString>,
) -> Result<Parsed<P>, clap::Error> {
    let mut command = P::command();
    let matches = command.try_get_matches_from_mut(&argv)?;
    let Some((name, sub)) = matches.subcommand().filter(|(n, _)| CONFIGURABLE.contains(n)) else {
        return P::from_arg_matches(&matches).map(Parsed::Run);
    };
    let name = name.to_owned();
    let sub_command = command
        .find_subcommand_mut(&name)
        .expect("a matched subcommand exists");
    let mut from_file = BTreeSet::new();
    let mut argv = argv;
    let path = sub.get_one::<PathBuf>("config").cloned();
    if let Some(path) = &path {
        let extra = file_arguments(sub_command, sub, path, &mut from_file)
            .map_err(|message| sub_command.error(clap::error::ErrorKind::InvalidValue, message))?;
        argv.extend(extra);
    }
    let matches = match (command.try_get_matches_from_mut(&argv), &path) {
        (Ok(matches), _) => matches,
        (Err(e), Some(path)) => return Err(blame_file(&mut command, &name, e, path, &from_file)),
        (Err(e), None) => return Err(e),
    };
    let (_, sub) = matches.subcommand().expect("the same subcommand");
    if sub.get_flag("print_config") {
        let sub_command = command
            .find_subcommand(&name)
            .expect("a matched subcommand exists");
        return Ok(Parsed::Print(effective(sub_command, sub, &from_file)));
    }
    P::from_arg_matches(&matches).map(Parsed::Run)
}

/// An error about a value the configuration file at `path` gave, said to
/// come from that file; any other error as it is.
fn blame_file(
    command: &mut clap::Command,
    name: &str,
    error: clap::Error,
    path: &std::path::Path,
    from_file: &BTreeSet<String>,
) -> clap::Error {
    let text = error.render().to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    let sub = command
        .find_subcommand_mut(name)
        .expect("a matched subcommand exists");
    let from_it = sub
        .get_arguments()
        .filter(|a| from_file.contains(a.get_id().as_str()))
        .filter_map(clap::Arg::get_long)
        .any(|long| first.contains(&format!("--{long} ")) || first.contains(&format!("--{long}>")));
    if !from_it {
        return error;
    }
    let message = format!("{}: {first}", path.display());
    sub.error(error.kind(), message)
}

/// The flags a configuration file adds: one for each of its settings that
/// neither the command line nor the environment gave.
fn file_arguments(
    command: &clap::Command,
    matches: &ArgMatches,
    path: &PathBuf,
    from_file: &mut BTreeSet<String>,
) -> Result<Vec<OsString>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the configuration file {shown}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the configuration file {shown} is not valid TOML: {e}"))?;
    let mut extra = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !NOT_SETTINGS.contains(&a.get_id().as_str()))
            .ok_or_else(|| {
                format!(
                    "{shown}: {key:?} is not a setting of peerlink {} (its settings are its flags: see --help)",
                    command.get_name()
                )
            })?;
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        match (value, is_switch) {
            (toml::Value::Boolean(true), true) => extra.push(OsString::from(format!("--{long}"))),
            (toml::Value::Boolean(false), true) => {}
            (_, true) => return Err(format!("{shown}: {key} is a switch: write {key} = true or false")),
            (toml::Value::String(s), false) => extra.push(OsString::from(format!("--{long}={s}"))),
            (toml::Value::Integer(n), false) => extra.push(OsString::from(format!("--{long}={n}"))),
            (toml::Value::Float(x), false) => extra.push(OsString::from(format!("--{long}={x}"))),
            (other, false) => {
                return Err(format!(
                    "{shown}: {key} takes one value (a string or a number), not {}",
                    other.type_str()
                ))
            }
        }
        from_file.insert(id.to_owned());
    }
    Ok(extra)
}

/// The effective configuration as TOML, each line saying where its value
/// came from.
fn effective(command: &clap::Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = format!("# peerlink {}: the effective configuration\n", command.get_name());
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&id) {
            continue;
        }
        // Defaults are shown as comments, so that the output read back as
        // a file sets exactly what was set.
        let (prefix, source) = if from_file.contains(id) {
            ("", "configuration file")
        } else {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => ("", "command line"),
                Some(ValueSource::EnvVariable) => ("", "environment"),
                Some(ValueSource::DefaultValue) => ("# ", "default"),
                _ => {
                    out.push_str(&format!("# {long} is not set\n"));
                    continue;
                }
            }
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = match raw.as_slice() {
            [] if matches!(arg.get_action(), ArgAction::SetTrue) => "true".to_owned(),
            [one] => toml_value(one, matches!(arg.get_action(), ArgAction::SetTrue)),
            many => {
                toml::Value::Array(many.iter().map(|v| toml::Value::String(v.clone())).collect()).to_string()
            }
        };
        out.push_str(&format!("{prefix}{long} = {value}  # {source}\n"));
    }
    out
}

/// A raw flag value as a TOML value: a switch as a boolean, a whole number
/// as an integer, anything else as a string.
fn toml_value(raw: &str, switch: bool) -> String {
    if switch {
        return (raw == "true").to_string();
    }
    match raw.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml::Value::String(raw.to_owned()).to_string(),
    }
}
