//! transum: translate news articles into English with open seq2seq models run
//! through candle.
//!
//! The library does the work; the `transum` binary only parses arguments and
//! prints. Data flows forward through the modules below: text (ingest,
//! sentences) -> tokenizer -> batch -> models (encoder, then decoder with a
//! KV cache; the maths only, on `cpu` kernels or candle's ops) -> generation
//! (greedy or beam search) -> tokenizer (decode) -> text -> pipeline
//! (outputs, manifest) -> summary.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod batch;
pub mod bench;
pub mod cpu;
pub mod device;
pub mod error;
pub mod failpoint;
pub mod generation;
pub mod hub;
pub mod lang;
pub mod lock;
pub mod merge;
pub mod models;
pub mod outputs;
pub mod pipeline;
pub mod quantize;
pub mod shard;
pub mod summary;
pub mod text;
pub mod tokenizer;
pub mod translate;
pub mod weights;

pub use error::{Error, Result};
pub use translate::{Translation, Translator};

/// The default translation model. Not pinned to a commit in the code: the hub
/// was unreachable where transum was built, so the commit could not be learned.
/// A run is still reproducible: hf-hub reuses the first download's snapshot
/// (until `transum download --force`), and the manifest records the resolved
/// commit; `--model Helsinki-NLP/opus-mt-fr-en@<commit>` pins one explicitly.
pub const DEFAULT_MODEL: &str = "Helsinki-NLP/opus-mt-fr-en";
