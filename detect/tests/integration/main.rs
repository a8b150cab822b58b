//! Integration tests of `gpusiem-detect`, linked into one test binary.

mod golden;
mod nab_scorer;
mod rules;
