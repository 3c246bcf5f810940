//! Hostile safetensors files and model cards for the formats reader's tests and the
//! fixture corpus: each file breaks exactly one rule of reference.md section 7 (or a card
//! rule), and modelgate must refuse each with an error naming the file, never panic.
//!
//! Only std and serde_json, so `make_fixtures` can write the corpus without modelgate
//! itself. Files that would be large on disk (a 10 MB card front matter) are not written
//! here; the tests generate those into a temp folder.

use std::fs;
use std::io;
use std::path::Path;

/// A safetensors file from a header given as text and a data section.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A header from (name, dtype, shape, [start, end]) entries.
fn header(entries: &[(&str, &str, &[u64], [u64; 2])]) -> String {
    let mut map = serde_json::Map::new();
    for (name, dtype, shape, offsets) in entries {
        map.insert(
            (*name).to_owned(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offsets}),
        );
    }
    serde_json::Value::Object(map).to_string()
}

/// A valid two-tensor file, used as the weights beside hostile cards.
fn valid() -> Vec<u8> {
    safetensors(
        &header(&[("a", "F32", &[2], [0, 8]), ("b", "U8", &[4], [8, 12])]),
        &[0; 12],
    )
}

/// The safetensors files, by name, each with its single fault.
fn safetensors_cases() -> Vec<(&'static str, Vec<u8>)> {
    let ok = valid();
    let mut cases = vec![
        // Cut inside the header.
        ("truncated.safetensors", ok[..20].to_vec()),
        // Shorter than the 8-byte length field.
        ("tiny.safetensors", vec![0x10, 0, 0]),
    ];
    let mut beyond = 5000u64.to_le_bytes().to_vec();
    beyond.extend_from_slice(br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#);
    cases.push(("header_beyond_file.safetensors", beyond));
    let mut huge = 200_000_000u64.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    cases.push(("header_200mb.safetensors", huge));
    cases.push((
        "header_not_json.safetensors",
        safetensors("{\"a\": not json at all", &[]),
    ));
    let bad: &[u8] = b"{\"\xff\xfe\": 1}";
    let mut not_utf8 = (bad.len() as u64).to_le_bytes().to_vec();
    not_utf8.extend_from_slice(bad);
    cases.push(("header_not_utf8.safetensors", not_utf8));
    cases.push(("header_array.safetensors", safetensors("[1, 2, 3]", &[])));
    cases.push((
        "overlap.safetensors",
        safetensors(
            &header(&[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [4, 12])]),
            &[0; 12],
        ),
    ));
    cases.push((
        "gap.safetensors",
        safetensors(
            &header(&[("a", "F32", &[2], [0, 8]), ("b", "F32", &[2], [16, 24])]),
            &[0; 24],
        ),
    ));
    cases.push((
        "shape_overflow.safetensors",
        safetensors(
            &header(&[("a", "F64", &[1 << 32, 1 << 32], [0, 8])]),
            &[0; 8],
        ),
    ));
    cases.push((
        "size_overflow.safetensors",
        safetensors(&header(&[("a", "F64", &[1 << 61], [0, 8])]), &[0; 8]),
    ));
    cases.push((
        "size_mismatch.safetensors",
        safetensors(&header(&[("a", "F32", &[3], [0, 8])]), &[0; 8]),
    ));
    cases.push((
        "data_short.safetensors",
        safetensors(
            &header(&[("a", "F32", &[2], [0, 8]), ("b", "F32", &[4], [8, 24])]),
            &[0; 20],
        ),
    ));
    cases.push((
        "data_trailing.safetensors",
        safetensors(&header(&[("a", "F32", &[2], [0, 8])]), &[0; 12]),
    ));
    cases.push((
        "unknown_dtype.safetensors",
        safetensors(&header(&[("a", "Q4_K", &[2], [0, 8])]), &[0; 8]),
    ));
    cases.push((
        "offsets_reversed.safetensors",
        safetensors(&header(&[("a", "U8", &[0], [8, 0])]), &[0; 8]),
    ));
    cases.push((
        "duplicate_name.safetensors",
        safetensors(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
            &[0; 8],
        ),
    ));
    cases.push((
        "metadata_not_strings.safetensors",
        safetensors(r#"{"__metadata__":{"format":{"nested":1}}}"#, &[]),
    ));
    cases.push((
        "deep_json.safetensors",
        safetensors(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)), &[]),
    ));
    cases
}

/// The model cards, by folder name: (folder, README.md bytes). Each folder also gets a
/// valid `model.safetensors`, so the card is the only fault.
fn card_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut bomb = String::from("---\nlicense: mit\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let (prev, name) = (w[0], w[1]);
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    bomb.push_str("---\n# A model\n");
    vec![
        ("card_alias_bomb", bomb.into_bytes()),
        (
            "card_invalid_utf8",
            b"---\nlicense: apache-2.0\nmodel_name: caf\xe9\n---\n# Card\n".to_vec(),
        ),
        (
            "card_deep_nesting",
            format!("---\nlicense: mit\ntags: {}\n---\n", "[".repeat(100_000)).into_bytes(),
        ),
        ("card_not_mapping", b"---\n- license\n- mit\n---\n".to_vec()),
        (
            "card_unclosed",
            b"---\nlicense: mit\n# no closing line\n".to_vec(),
        ),
    ]
}

/// Write every hostile file into `dir`: `safetensors/<case>.safetensors` and
/// `cards/<case>/{README.md, model.safetensors}`.
pub fn write_all(dir: &Path) -> io::Result<()> {
    let st = dir.join("safetensors");
    fs::create_dir_all(&st)?;
    for (name, bytes) in safetensors_cases() {
        fs::write(st.join(name), bytes)?;
    }
    for (name, card) in card_cases() {
        let d = dir.join("cards").join(name);
        fs::create_dir_all(&d)?;
        fs::write(d.join("README.md"), card)?;
        fs::write(d.join("model.safetensors"), valid())?;
    }
    Ok(())
}
