//! Request and response bodies of the local API. Field names are the JSON schema `weft status
//! --json` documents; add fields, never rename them.

use serde::{Deserialize, Serialize};

/// The body of every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}
