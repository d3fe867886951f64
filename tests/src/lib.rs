//! pbx-tests: end-to-end tests of the real `pbx` binary against real clients (see `tests/`).
