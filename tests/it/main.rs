//! The integration test binary: end-to-end checks of the `modelgate` command and library on
//! fixtures, hostile files and the real SmolLM2 checkpoint. One module per area.

mod convert;
mod inspect;
mod policy;
mod fixtures;
mod gguf;
mod formats_hf;
mod scan;
mod sign;
mod quant;
mod engine;
mod support;
