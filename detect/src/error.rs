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
    /// A file or directory could not be read or written (`gpusiem bench nab`).
    #[error("{op} `{path}`: {source}")]
    File {
        /// What was being done (`reading`, `writing`, `listing`).
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data or result CSV did not have the expected shape.
    #[error("`{path}` line {line}: {reason}")]
    Csv {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A label file could not be parsed.
    #[error("labels `{path}`: {reason}")]
    Labels {
        /// The label file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Detector output does not line up with the labels (missing file, wrong row count).
    #[error("results for `{file}`: {reason}")]
    Results {
        /// Corpus-relative data file (`realTweets/Twitter_volume_AAPL.csv`).
        file: String,
        /// What is wrong.
        reason: String,
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
