//! The convert stage: turn a checkpoint into another format or tensor type (safetensors to
//! GGUF, GGUF to safetensors, F32/F16/BF16 and ggml's quantized block types).
//!
//! It sits after `formats` (which reads the source checkpoint) in the pipeline
//! import -> convert/quantize -> scan/verify -> policy -> parity -> sign: a plan picks each
//! tensor's target type and name, the tensors stream through [`quant`]'s block kernels on
//! all cores, and a writer stores them in the target format.
//!
//! Built so far: [`quant`], the block-format kernels (quantize and dequantize rows of
//! `f32`). The planner, name mapping, tokenizer keys and writers are not built yet.

pub mod quant;
