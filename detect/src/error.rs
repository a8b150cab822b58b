//! The crate's error type.

/// Why building or running detection failed. Messages never carry payload values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A detector, rule or inventory setting is invalid.
    #[error("invalid configuration at `{path}`: {message}")]
    Config {
        /// Dotted path of the setting.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A rule file could not be read or parsed.
    #[error("{file}:{line}: {message}")]
    Rule {
        /// Rule file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A batch did not have the columns its stream's schema promises (a bug upstream).
    #[error("the {stream} batch lacks column `{column}`")]
    Schema {
        /// Stream name.
        stream: &'static str,
        /// Missing or mistyped column.
        column: &'static str,
    },
}

/// Errors of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
