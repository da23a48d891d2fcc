//! The command line both programs share: `run` (the default) or
//! `check-config FILE`, with `--config`, `--log-level`, `--help` and
//! `--version`, plus a program's own reports (commands that print
//! something derived from its config, such as `tether-hub egress-config`).
//! Each program brings its own help text and default path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a program tells [`main`] about itself.
#[derive(Debug, Clone, Copy)]
pub struct Program<'a> {
    /// The binary's name, for messages.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// Its `--help` text.
    pub help: &'a str,
    /// The config file used without `--config`.
    pub default_config: &'a str,
    /// The program's report commands.
    pub reports: &'a [&'a str],
}

/// Exit status of `run` with a config file that does not pass `check`
/// (sysexits' EX_CONFIG): a systemd unit sets `RestartPreventExitStatus=78`,
/// since restarting cannot fix the file.
pub const EX_CONFIG: u8 = 78;

/// The whole `main` of both programs: parses the command line, prints help
/// or version, checks a config (`check`), or runs (`run`). Exit codes: 0,
/// 1 for a failure, 2 for a bad command line, [`EX_CONFIG`] when asked to
/// run with a config that does not pass `check`.
pub fn main(
    program: Program<'_>,
    check: impl FnOnce(&Path) -> Result<(), String>,
    run: impl FnOnce(&Path, Option<String>) -> Result<(), String>,
    report: impl FnOnce(&str, &Path) -> Result<String, String>,
) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = program.name;
    match parse(&args, program.default_config, program.reports) {
        Err(e) => {
            eprintln!("{name}: {e}\nTry '{name} --help'.");
            ExitCode::from(2)
        }
        Ok(Command::Help) => {
            print!("{}", program.help);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("{name} {}", program.version);
            ExitCode::SUCCESS
        }
        Ok(Command::Check(path)) => match check(&path) {
            Ok(()) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Report {
            name: which,
            config,
        }) => match report(&which, &config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::Run { config, log_level }) => {
            // A config that cannot work exits with its own status, so a
            // supervisor can tell it from a crash and not restart in a loop.
            if let Err(e) = check(&config) {
                eprintln!("{e}");
                return ExitCode::from(EX_CONFIG);
            }
            match run(&config, log_level) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run with this config file; `log_level` overrides the file's.
    Run {
        /// The config file.
        config: PathBuf,
        /// `--log-level`, if given.
        log_level: Option<String>,
    },
    /// Check a config file and exit.
    Check(PathBuf),
    /// Print the report `name` derived from the config file and exit.
    Report {
        /// Which report.
        name: String,
        /// The config file.
        config: PathBuf,
    },
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name. `default_config` is used
/// without `--config`; `reports` are the program's report commands. The
/// error is a line for the user.
pub fn parse(args: &[String], default_config: &str, reports: &[&str]) -> Result<Command, String> {
    let mut config = PathBuf::from(default_config);
    let mut log_level = None;
    let mut check = false;
    let mut report = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "run" => {}
            "check-config" => {
                check = true;
                config = PathBuf::from(it.next().ok_or("check-config needs a FILE")?);
            }
            "-c" | "--config" => config = PathBuf::from(it.next().ok_or("--config needs a FILE")?),
            "--log-level" => {
                log_level = Some(it.next().ok_or("--log-level needs a LEVEL")?.clone())
            }
            other if reports.contains(&other) => report = Some(other.to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(if check {
        Command::Check(config)
    } else if let Some(name) = report {
        Command::Report { name, config }
    } else {
        Command::Run { config, log_level }
    })
}

/// Reads the config file at `path` and hands its text and folder (for
/// relative paths) to `parse`; the error names the file and every problem.
pub fn load<T>(
    path: &Path,
    parse: impl FnOnce(&str, &Path) -> Result<T, crate::Errors>,
) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("{}:\n{e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse(&args(&[]), "/etc/x.toml", &[]),
            Ok(Command::Run {
                config: "/etc/x.toml".into(),
                log_level: None
            })
        );
        assert_eq!(
            parse(
                &args(&["run", "-c", "a.toml", "--log-level", "debug"]),
                "/etc/x.toml",
                &[]
            ),
            Ok(Command::Run {
                config: "a.toml".into(),
                log_level: Some("debug".into())
            })
        );
        assert_eq!(
            parse(&args(&["check-config", "b.toml"]), "x", &[]),
            Ok(Command::Check("b.toml".into()))
        );
        assert_eq!(parse(&args(&["--help"]), "x", &[]), Ok(Command::Help));
        assert_eq!(parse(&args(&["-V"]), "x", &[]), Ok(Command::Version));
        assert!(parse(&args(&["--config"]), "x", &[]).is_err());
        assert!(parse(&args(&["check-config"]), "x", &[]).is_err());
        assert!(parse(&args(&["--frobnicate"]), "x", &[]).is_err());
        assert_eq!(
            parse(
                &args(&["egress-config", "-c", "h.toml"]),
                "x",
                &["egress-config"]
            ),
            Ok(Command::Report {
                name: "egress-config".into(),
                config: "h.toml".into()
            })
        );
        assert!(parse(&args(&["egress-config"]), "x", &[]).is_err());
    }

    #[test]
    fn load_names_the_file() {
        let e = load(Path::new("/nonexistent/x.toml"), |_, _| Ok(())).expect_err("missing");
        assert!(e.starts_with("/nonexistent/x.toml: cannot read"), "{e}");
    }
}
