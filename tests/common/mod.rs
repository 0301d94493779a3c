//! Helpers shared by the integration tests (`mod common;`): real container engines for tests.
pub mod engines;
