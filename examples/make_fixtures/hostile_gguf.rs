//! Hostile GGUF files: each lies about one thing the way the llama.cpp GGUF CVEs did
//! (counts and lengths far beyond the file, dimensions that overflow or are zero, offsets
//! outside the file, names that repeat or are not UTF-8, ...). Every reader of modelgate must
//! refuse each one with an error naming the file and the fault, without panicking and
//! without allocating what the file claims.
//!
//! The bytes are built by hand here rather than with modelgate's writer, which refuses to
//! write any of these.

use std::io;
use std::path::Path;

/// Write every hostile GGUF file into `dir` (which must exist).
pub fn write_all(dir: &Path) -> io::Result<()> {
    for (name, bytes) in corpus() {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

/// GGUF bytes under construction (little-endian, as the format is).
struct G(Vec<u8>);

impl G {
    /// Magic, version, tensor count, key count.
    fn header(version: u32, tensors: u64, kvs: u64) -> G {
        let mut g = G(b"GGUF".to_vec());
        g.u32(version).u64(tensors).u64(kvs);
        g
    }

    fn u32(&mut self, v: u32) -> &mut G {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut G {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn str(&mut self, s: &[u8]) -> &mut G {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }

    fn kv_str(&mut self, key: &str, value: &str) -> &mut G {
        self.str(key.as_bytes()).u32(8).str(value.as_bytes())
    }

    fn kv_u32(&mut self, key: &str, value: u32) -> &mut G {
        self.str(key.as_bytes()).u32(4).u32(value)
    }

    /// A tensor info: name, dims in GGUF `ne` order, ggml type id, relative offset.
    fn tensor(&mut self, name: &[u8], ne: &[u64], ty: u32, offset: u64) -> &mut G {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }

    /// Zero padding up to a multiple of `align`.
    fn pad(&mut self, align: usize) -> &mut G {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }

    fn data(&mut self, n: usize) -> &mut G {
        self.0.extend(std::iter::repeat_n(0x3c, n));
        self
    }

    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

const F32: u32 = 0;
const Q4_0: u32 = 2;

/// A valid file with one 8-element F32 tensor, for the files that break one thing after it.
fn one_tensor(version: u32, name: &[u8], ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    G::header(version, 1, 1)
        .kv_str("general.architecture", "llama")
        .tensor(name, ne, ty, offset)
        .pad(32)
        .data(64)
        .done()
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        // Cut inside the tensor count.
        ("truncated_header.gguf", {
            let mut b = G::header(3, 1, 1).done();
            b.truncate(12);
            b
        }),
        // The second tensor info ends inside its dimensions.
        ("truncated_tensor_infos.gguf", {
            G::header(3, 2, 1)
                .kv_str("general.architecture", "llama")
                .tensor(b"a.weight", &[8], F32, 0)
                .str(b"b.weight")
                .u32(2)
                .u64(8)
                .done()
        }),
        (
            "tensor_count_2p60.gguf",
            G::header(3, 1 << 60, 0).data(64).done(),
        ),
        (
            "metadata_key_count_2p60.gguf",
            G::header(3, 0, 1 << 60).data(64).done(),
        ),
        ("string_length_2p62.gguf", {
            G::header(3, 0, 1)
                .str(b"general.name")
                .u32(8)
                .u64(1 << 62)
                .data(64)
                .done()
        }),
        (
            "key_length_2p62.gguf",
            G::header(3, 0, 1).u64(1 << 62).data(64).done(),
        ),
        // 2^40 u32 elements: 4 TiB claimed.
        ("array_2p40_elements.gguf", {
            G::header(3, 0, 1)
                .str(b"tokenizer.ggml.token_type")
                .u32(9)
                .u32(5)
                .u64(1 << 40)
                .data(64)
                .done()
        }),
        // 2^40 strings: each needs at least its 8-byte length.
        ("string_array_2p40_elements.gguf", {
            G::header(3, 0, 1)
                .str(b"tokenizer.ggml.tokens")
                .u32(9)
                .u32(8)
                .u64(1 << 40)
                .data(64)
                .done()
        }),
        // Arrays of arrays 64 deep: recursion, not allocation.
        ("nested_arrays_too_deep.gguf", {
            let mut g = G::header(3, 0, 1);
            g.str(b"general.tags").u32(9);
            for _ in 0..64 {
                g.u32(9).u64(1);
            }
            g.u32(0).u64(0).done()
        }),
        ("unknown_metadata_value_type.gguf", {
            G::header(3, 0, 1)
                .str(b"general.name")
                .u32(13)
                .data(64)
                .done()
        }),
        ("unknown_array_element_type.gguf", {
            G::header(3, 0, 1)
                .str(b"general.tags")
                .u32(9)
                .u32(0x4000_0000)
                .u64(1)
                .data(64)
                .done()
        }),
        ("duplicate_metadata_key.gguf", {
            G::header(3, 0, 2)
                .kv_str("general.architecture", "llama")
                .kv_str("general.architecture", "qwen2")
                .done()
        }),
        ("non_utf8_metadata_key.gguf", {
            G::header(3, 0, 1)
                .str(b"general.\xff\xfename")
                .u32(8)
                .str(b"x")
                .done()
        }),
        ("alignment_not_power_of_two.gguf", {
            G::header(3, 1, 1)
                .kv_u32("general.alignment", 48)
                .tensor(b"w", &[8], F32, 0)
                .pad(48)
                .data(32)
                .done()
        }),
        ("alignment_zero.gguf", {
            G::header(3, 1, 1)
                .kv_u32("general.alignment", 0)
                .tensor(b"w", &[8], F32, 0)
                .pad(32)
                .data(32)
                .done()
        }),
        ("version_1.gguf", {
            // Version 1 used u32 counts and lengths.
            let mut g = G(b"GGUF".to_vec());
            g.u32(1).u32(0).u32(0);
            g.done()
        }),
        ("version_big_endian.gguf", {
            let mut g = G(b"GGUF".to_vec());
            g.0.extend_from_slice(&3u32.to_be_bytes());
            g.0.extend_from_slice(&0u64.to_be_bytes());
            g.0.extend_from_slice(&0u64.to_be_bytes());
            g.done()
        }),
        ("n_dims_9.gguf", {
            one_tensor(3, b"w", &[1, 1, 1, 1, 1, 1, 1, 1, 8], F32, 0)
        }),
        ("zero_dimension.gguf", one_tensor(3, b"w", &[8, 0], F32, 0)),
        // 2^32 * 2^32 * 2 elements: wraps a u64 to zero.
        ("dimensions_overflow.gguf", {
            one_tensor(3, b"w", &[1 << 32, 1 << 32, 2], F32, 0)
        }),
        // Q4_0 has 32-element blocks.
        ("partial_block.gguf", one_tensor(3, b"w", &[33], Q4_0, 0)),
        // 2^20 F32 elements claimed, 64 bytes present.
        (
            "tensor_data_beyond_eof.gguf",
            one_tensor(3, b"w", &[1 << 20], F32, 0),
        ),
        (
            "tensor_offset_beyond_eof.gguf",
            one_tensor(3, b"w", &[8], F32, 1 << 40),
        ),
        (
            "misaligned_tensor_offset.gguf",
            one_tensor(3, b"w", &[8], F32, 3),
        ),
        ("duplicate_tensor_names.gguf", {
            G::header(3, 2, 0)
                .tensor(b"w", &[8], F32, 0)
                .tensor(b"w", &[8], F32, 32)
                .pad(32)
                .data(64)
                .done()
        }),
        // Two tensors share their bytes.
        ("overlapping_tensors.gguf", {
            G::header(3, 2, 0)
                .tensor(b"a", &[16], F32, 0)
                .tensor(b"b", &[8], F32, 32)
                .pad(32)
                .data(64)
                .done()
        }),
        (
            "non_utf8_tensor_name.gguf",
            one_tensor(3, b"blk.0.\xc3\x28", &[8], F32, 0),
        ),
    ]
}
