//! modelgate: vet an open-weight LLM checkpoint before adoption, convert and quantize it,
//! check licence, provenance and parity, and sign what was audited.
//!
//! The pipeline is import → convert/quantize → scan/verify → policy → parity → sign.
//! Each stage is one module; [`formats`] is the only code that reads checkpoint bytes, and
//! [`report`] (with [`cli`]) the only code that prints.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod convert;
pub mod engine;
pub mod finding;
pub mod formats;
pub mod hub;
pub mod inspect;
pub mod parity;
pub mod pipeline;
pub mod policy;
pub mod provenance;
pub mod report;
pub mod scan;
pub mod sign;
pub mod types;
pub mod userfile;
