//! Secrets of the agent's configuration (a board's login password, a LAVA token): a type
//! that never prints its value.

use serde::Deserialize;

/// A secret from the config; it prints as `MASKED` in `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}
