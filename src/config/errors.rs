//! Validation problems, each with its TOML path, collected and reported together.

use std::fmt;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// TOML path such as `stacks[0].tokens[1].scope`; empty for file-level problems.
    pub path: String,
    pub message: String,
}

/// All validation problems of one file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(path: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigError { path: path.into(), message }])
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            if e.path.is_empty() {
                writeln!(f, "  - {}", e.message)?;
            } else {
                writeln!(f, "  - {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
