//! Human units in the config: durations ("2s", "7d") and sizes ("1MiB").

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"30s"` or `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| "not a duration (e.g. \"2s\", \"7d\"; the value is not shown)".to_owned())
}

/// The longest duration a setting may take. None of them means anything past a year
/// (a timeout, a grace, a warning's lead), and a deadline computed from one far larger
/// would overflow the clock's range instead of meaning "never".
pub const MAX_SETTING: Duration = Duration::from_secs(365 * 86_400);

/// [`parse_duration`] for a setting: at most [`MAX_SETTING`].
pub fn setting_duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).and_then(|d| {
        if d <= MAX_SETTING {
            Ok(d)
        } else {
            Err("must be at most 365 days (\"365d\")".to_owned())
        }
    })
}

/// Parses a byte size: a plain number or a number with B, KB, KiB, MB, MiB, GB, GiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let err = || "not a size (e.g. \"1MiB\", \"512KiB\", \"1000\"; the value is not shown)".to_owned();
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1 MiBs").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(setting_duration("365d"), Ok(MAX_SETTING));
        for long in ["366d", "300000000000y", "18446744073709551615s"] {
            assert_eq!(setting_duration(long), Err("must be at most 365 days (\"365d\")".to_owned()), "{long}");
        }
    }
}
