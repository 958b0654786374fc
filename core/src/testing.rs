//! Helpers for driving machines in tests.
