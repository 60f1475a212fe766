//! `ledger-audit`: the auditor's offline verifier (API.md "Commands").
//!
//! `ledger-audit verify --entries FILE --checkpoint FILE --public-key FILE` checks an export;
//! `ledger-audit verify --data DIR` checks a stopped store. Exit 0 with a one-line summary on
//! stdout when valid; exit 1 with a line naming the first bad entry (`seq N: why`) when not;
//! exit 2 on a usage error.

use ledger_core::audit::{verify_export, verify_store, AuditError, Summary};
use ledger_core::checkpoint::{Checkpoint, PublicKeyDoc};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  ledger-audit verify --entries FILE --checkpoint FILE --public-key FILE
  ledger-audit verify --data DIR";

/// Largest checkpoint or public-key file read (they are a few hundred bytes).
const SMALL_FILE_MAX_BYTES: u64 = 64 * 1024;

enum Mode {
    Export {
        entries: PathBuf,
        checkpoint: PathBuf,
        public_key: PathBuf,
    },
    Store(PathBuf),
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let (command, rest) = args.split_first().ok_or("missing command")?;
    if command != "verify" {
        return Err(format!("unknown command {command:?}"));
    }
    let mut flags = std::collections::HashMap::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let name = match flag.as_str() {
            "--entries" | "--checkpoint" | "--public-key" | "--data" => flag.clone(),
            other => return Err(format!("unknown option {other:?}")),
        };
        let value = it.next().ok_or(format!("{name} needs a value"))?;
        if flags.insert(name.clone(), PathBuf::from(value)).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    match (
        flags.remove("--data"),
        flags.remove("--entries"),
        flags.remove("--checkpoint"),
        flags.remove("--public-key"),
    ) {
        (Some(dir), None, None, None) => Ok(Mode::Store(dir)),
        (None, Some(entries), Some(checkpoint), Some(public_key)) => Ok(Mode::Export {
            entries,
            checkpoint,
            public_key,
        }),
        _ => {
            Err("give either --data DIR, or all of --entries, --checkpoint and --public-key".into())
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> Result<T, AuditError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| AuditError::Input(format!("{}: {e}", path.display())))?;
    if meta.len() > SMALL_FILE_MAX_BYTES {
        return Err(AuditError::Input(format!(
            "{}: larger than {SMALL_FILE_MAX_BYTES} bytes",
            path.display()
        )));
    }
    let text =
        std::fs::read(path).map_err(|e| AuditError::Input(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| AuditError::Input(format!("{}: {e}", path.display())))
}

fn run(mode: Mode) -> Result<Summary, AuditError> {
    match mode {
        Mode::Store(dir) => verify_store(&dir),
        Mode::Export {
            entries,
            checkpoint,
            public_key,
        } => {
            let checkpoint: Checkpoint = read_json(&checkpoint)?;
            let key: PublicKeyDoc = read_json(&public_key)?;
            let key = key
                .public_key_bytes()
                .map_err(|e| AuditError::Input(format!("public key: {e}")))?;
            let file = std::fs::File::open(&entries)
                .map_err(|e| AuditError::Input(format!("{}: {e}", entries.display())))?;
            verify_export(file, &checkpoint, &key)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(mode) => mode,
        Err(problem) => {
            eprintln!("ledger-audit: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(mode) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED {e}");
            ExitCode::from(1)
        }
    }
}
