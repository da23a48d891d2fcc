//! Durations ("1m30s") and byte sizes ("64KiB", "10MB") written as strings.

use crate::error::Error;
use std::time::Duration;

const DURATION_UNITS: &str = "d, h, m, s or ms";
const BYTE_UNITS: &str = "B, KiB, MiB, GiB, TiB (1024-based) or kB, MB, GB, TB (1000-based)";

fn fail(message: impl Into<String>) -> Error {
    Error::new(None, None, message)
}

/// Parses a duration like `"500ms"`, `"30s"`, `"5m"`, `"1h"` or `"1m30s"`.
///
/// Units are `d`, `h`, `m`, `s` and `ms`, each used at most once, largest first. Public so
/// command-line flags can share the config file's syntax. The error has no line or key.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let example = "like \"30s\", \"500ms\" or \"1m30s\"";
    if text.is_empty() {
        return Err(fail(format!(
            "empty duration; write a number and a unit, {example}"
        )));
    }
    if text.starts_with('-') {
        return Err(fail(format!("a duration cannot be negative: \"{text}\"")));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut previous: Option<(usize, &str)> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail(format!(
                "\"{text}\" is not a duration; write a number and a unit, {example}"
            )));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with(['.', ',']) {
            return Err(fail(format!(
                "\"{text}\": fractions are not supported; use a smaller unit, like \"1500ms\""
            )));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let (rank, seconds) = match unit {
            "d" => (0, 86_400),
            "h" => (1, 3_600),
            "m" => (2, 60),
            "s" => (3, 1),
            "ms" => (4, 0),
            "" if next.is_empty() && previous.is_none() => {
                return Err(fail(format!(
                    "\"{text}\" has no unit; write \"{text}s\" or another unit ({DURATION_UNITS})"
                )))
            }
            "" => return Err(fail(format!("\"{text}\": the last number has no unit"))),
            _ if unit.contains(char::is_whitespace) => {
                return Err(fail(format!("\"{text}\": remove the spaces, {example}")))
            }
            _ => {
                return Err(fail(format!(
                    "\"{text}\": unknown unit \"{unit}\"; use {DURATION_UNITS}"
                )))
            }
        };
        if let Some((before, before_unit)) = previous {
            if rank <= before {
                return Err(fail(format!(
                    "\"{text}\": \"{unit}\" after \"{before_unit}\"; write each unit once, largest first, like \"1h30m\""
                )));
            }
        }
        let too_large = || fail(format!("\"{text}\" is too large a duration"));
        let n: u64 = number.parse().map_err(|_| too_large())?;
        let part = if seconds == 0 {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n.checked_mul(seconds).ok_or_else(too_large)?)
        };
        total = total.checked_add(part).ok_or_else(too_large)?;
        previous = Some((rank, unit));
        rest = next;
    }
    Ok(total)
}

/// Parses a byte size like `"512B"`, `"64KiB"`, `"4MiB"`, `"1GiB"` or `"10MB"`.
///
/// `KiB`/`MiB`/`GiB`/`TiB` count in 1024s, `kB`/`MB`/`GB`/`TB` in 1000s; one space may sit
/// between number and unit. Ambiguous `K`, `KB`, `M` ... are rejected with a hint. Public so
/// command-line flags can share the config file's syntax. The error has no line or key.
pub fn parse_bytes(text: &str) -> Result<u64, Error> {
    if text.is_empty() {
        return Err(fail(
            "empty size; write a number and a unit, like \"64KiB\"",
        ));
    }
    if text.starts_with('-') {
        return Err(fail(format!("a size cannot be negative: \"{text}\"")));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(fail(format!(
            "\"{text}\" is not a size; write a number and a unit, like \"64KiB\""
        )));
    }
    let (number, after) = text.split_at(digits);
    if after.starts_with(['.', ',']) {
        return Err(fail(format!(
            "\"{text}\": fractions are not supported; use a smaller unit, like \"1536KiB\""
        )));
    }
    let unit = after.strip_prefix(' ').unwrap_or(after);
    let multiplier: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "" => {
            return Err(fail(format!(
                "\"{text}\" has no unit; write \"{number}B\", or the number {number} without quotes"
            )))
        }
        "K" | "k" | "KB" | "Ki" | "M" | "Mi" | "G" | "Gi" | "T" | "Ti" => {
            return Err(fail(format!(
                "\"{text}\": unit \"{unit}\" is ambiguous; use {BYTE_UNITS}"
            )))
        }
        _ => {
            return Err(fail(format!(
                "\"{text}\": unknown unit \"{unit}\"; use {BYTE_UNITS}"
            )))
        }
    };
    let too_large = || fail(format!("\"{text}\" is too large a size"));
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(multiplier).ok_or_else(too_large)
}
