//! The host's layer rules and unpacker (`src/layer/`), compiled into the
//! agent: one implementation of the OCI whiteout rules for both sides.

#[path = "../../src/layer/error.rs"]
#[allow(dead_code)] // the host's conversion errors are not raised here
mod error;
#[path = "../../src/layer/rules.rs"]
#[allow(dead_code)]
pub mod rules;

use error::show;
pub use error::LayerError;
