//! Helpers shared by the real-broker integration tests in `tests/tests/`.
