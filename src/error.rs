//! The library's error type.
//!
//! Every error that a user can act on names the file or tensor involved and says
//! what to do next (`hint`). Source errors are kept as `source`, never flattened
//! into strings, so `anyhow`'s chain in `main.rs` prints the whole story.

use std::path::{Path, PathBuf};

/// Boxed source error kept for the error chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors raised by the transum library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, parsed or used.
    #[error("{path}: {what}\n  hint: {hint}")]
    File {
        path: PathBuf,
        what: String,
        hint: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A tensor in a weight file is missing or has the wrong shape.
    #[error("{path}: tensor `{name}` {what}\n  hint: {hint}")]
    Tensor {
        path: PathBuf,
        name: String,
        what: String,
        hint: String,
    },

    /// A setting (flag, config field, generation option) is invalid.
    #[error("{what}\n  hint: {hint}")]
    Setting { what: String, hint: String },

    /// Input text that cannot be translated as given.
    #[error("{what}\n  hint: {hint}")]
    Input { what: String, hint: String },

    /// A model file could not be fetched from the hub or found in the cache.
    #[error("{what}\n  hint: {hint}")]
    Hub {
        what: String,
        hint: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A numerical failure inside candle (shape mismatch, device error). The
    /// message is candle's, kept as the source: `{:#}` prints it once.
    #[error("tensor computation failed")]
    Candle(#[from] candle_core::Error),
}

/// Result alias used across the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A file-level error with a hint and an optional source.
    pub fn file(
        path: impl AsRef<Path>,
        what: impl Into<String>,
        hint: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            what: what.into(),
            hint: hint.into(),
            source,
        }
    }

    /// An invalid setting, with the valid choices or the fix in `hint`.
    pub fn setting(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Setting {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// This error, found in `path`: a setting or input error becomes a file
    /// error naming it (a config field the file holds, an article's text);
    /// other errors already name what they are about and are unchanged.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            Error::Setting { what, hint } | Error::Input { what, hint } => Error::File {
                path: path.as_ref().to_path_buf(),
                what,
                hint,
                source: None,
            },
            e => e,
        }
    }

    /// Input that cannot be processed as given.
    pub fn input(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Input {
            what: what.into(),
            hint: hint.into(),
        }
    }
}
