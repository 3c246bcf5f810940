//! The integration test binary: end-to-end checks of the `modelgate` command and library on
//! fixtures, hostile files and the real SmolLM2 checkpoint. One module per area.

// The fixture generator's modules are compiled into each test module that checks their output.
#![allow(clippy::duplicate_mod)]

mod budget;
mod convert;
mod convert_moe;
mod engine;
mod engine_moe;
mod errors;
mod fixtures;
mod formats_hf;
mod gguf;
mod hub;
mod imatrix;
mod imatrix_cmd;
mod inspect;
mod logits;
mod moe_gate;
mod parity;
mod pipeline;
mod pipeline_imatrix;
mod policy;
mod quant;
mod quant_moe;
mod scan;
mod sentencepiece;
mod sign;
mod split;
mod support;
