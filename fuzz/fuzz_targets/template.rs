//! Fuzz the chat-template analyser, the template readers and `generate`'s renderer: any
//! text must yield issues (with offsets inside the text) or none, and render or fail, never
//! a panic, stack overflow or endless loop.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use modelgate::formats::template;
use modelgate::scan::analyse_template;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for i in analyse_template(text) {
        assert!(i.offset <= text.len());
        assert!(i.line >= 1 && i.column >= 1);
    }
    let _ = template::check_tag_sizes(text);
    let _ = modelgate::engine::chat::render(text, "hi", Some("<s>"), Some("</s>"));
    assert_eq!(template::for_parser(text).len(), text.len());
    // the same text as a tokenizer_config.json, and as its `chat_template` value
    if let Ok(sources) = template::from_json_text(Path::new("tokenizer_config.json"), text) {
        for s in &sources {
            let p = s.file_pos(s.text.len());
            assert!(p.offset.is_none_or(|o| o <= text.len() as u64));
        }
    }
    let wrapped = format!("{{\"chat_template\": \"{}\"}}", json_escape(text));
    if let Ok(sources) = template::from_json_text(Path::new("c.json"), &wrapped) {
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].text, text);
        // `{"chat_template": "` is 19 bytes: the value's first byte is at 19
        assert_eq!(sources[0].file_pos(0).offset, Some(19));
        for s in &sources {
            for at in [0, s.text.len() / 2, s.text.len()] {
                let _ = s.file_pos(at);
            }
        }
    }
});

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
