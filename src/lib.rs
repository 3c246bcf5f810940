//! modelgate: vet an open-weight LLM checkpoint before adoption, convert and quantize it,
//! check licence, provenance and parity, and sign what was audited.
//!
//! The pipeline is import → scan → convert/quantize → verify → policy → parity → sign.
//! Each stage is one module; [`formats`] is the only code that reads checkpoint bytes, and
//! [`report`] (with [`cli`]) the only code that prints.
//!
//! Layers point downward: [`cli`] → [`pipeline`] → stages ([`convert`], [`engine`],
//! [`parity`], [`policy`], [`scan`], [`sign`]) → [`formats`] and [`digest`] → shared types
//! ([`types`], [`finding`], [`userfile`]). A stage never imports the pipeline or another
//! stage's internals.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
pub mod convert;
pub mod digest;
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
