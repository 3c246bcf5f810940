//! The integration test binary: end-to-end checks of the `modelgate` command and library on
//! fixtures, hostile files and the real SmolLM2 checkpoint. One module per area.

mod convert;
mod engine;
mod fixtures;
mod formats_hf;
mod gguf;
mod inspect;
mod policy;
mod quant;
mod scan;
mod sign;
mod support;
