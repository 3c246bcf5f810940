//! Chat templates: the model's own Jinja template (tokenizer_config.json `chat_template` or
//! GGUF `tokenizer.chat_template`) rendered with `minijinja`, configured as transformers
//! configures Jinja (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! Python string methods).
//!
//! Templates come from the checkpoint and are therefore untrusted: rendering is sandboxed
//! by minijinja (no I/O, no Python objects: the CVE-2024-34359 payloads find no dunder
//! attributes to climb), bounded by a fuel limit and its output capped while it is written.
//! minijinja charges fuel per instruction and per byte a string, list or filter result
//! allocates, checked before the allocation, so the fuel bounds both endless loops and
//! strings doubled in a variable (`{% set ns.s = ns.s ~ ns.s %}` in a loop).
//! Before parsing, [`check_tag_sizes`] refuses tags long enough to make the parser or the
//! compiler recurse past the stack (`{{ a~a~a~… }}`, `- - - … 1`).

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use super::EngineError;
use crate::formats::template::check_tag_sizes;

/// Fuel a template may spend (one per instruction, one per 64 bytes it builds): ample for
/// any real chat template, small enough that a hostile loop stops within milliseconds and
/// a hostile string stops near 128 MB.
const FUEL: u64 = 2_000_000;
/// Longest rendered prompt accepted.
const MAX_OUTPUT: usize = 1 << 20;

/// The default template from a tokenizer_config.json `chat_template` value: a string, or a
/// list of `{name, template}` (the one named `default`, else the first).
pub fn template_from_config(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => {
            let named = |want: Option<&str>| {
                items.iter().find_map(|it| {
                    let name = it.get("name").and_then(Json::as_str);
                    let t = it.get("template").and_then(Json::as_str)?;
                    (want.is_none() || name == want).then(|| t.to_string())
                })
            };
            named(Some("default")).or_else(|| named(None))
        }
        _ => None,
    }
}

/// Render one user message followed by the assistant prompt.
pub fn render(
    template: &str,
    user: &str,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String, EngineError> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
    env.set_syntax(syntax);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    check_tag_sizes(template).map_err(|r| {
        EngineError::ChatTemplate(format!("is refused at byte {}: {}", r.offset, r.why))
    })?;
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| EngineError::ChatTemplate(format!("does not parse: {e}")))?;
    let messages = vec![context! { role => "user", content => user }];
    // Written through a capped sink, so a loop printing a large string stops at the cap
    // instead of first building the whole output in memory.
    let mut sink = Capped::default();
    let rendered = tmpl.render_captured_to(
        context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        },
        &mut sink,
    );
    if sink.over {
        return Err(EngineError::ChatTemplate(format!(
            "renders more than the {MAX_OUTPUT}-byte limit"
        )));
    }
    rendered.map_err(|e| EngineError::ChatTemplate(format!("does not render: {e}")))?;
    String::from_utf8(sink.buf)
        .map_err(|_| EngineError::ChatTemplate("renders text that is not UTF-8".into()))
}

/// An output buffer that refuses to grow past [`MAX_OUTPUT`].
#[derive(Default)]
struct Capped {
    buf: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > MAX_OUTPUT {
            self.over = true;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as its GGUF stores it.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml() {
        let out = render(SMOLLM2, "Hi there", None, None).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_bos_and_exceptions() {
        let t = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}{% endfor %}";
        assert_eq!(render(t, "  hi ", Some("<s>"), None).unwrap(), "<s>HI");
        let t = "{{ raise_exception('no system role') }}";
        let e = render(t, "x", None, None).unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        assert!(render(t, "x", None, None).is_err());
    }

    #[test]
    fn hostile_templates_fail_cleanly() {
        // CVE-2024-34359 payloads: minijinja has no Python objects behind the dunders
        for t in [
            "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
            "{{ lipsum['__glo' ~ 'bals__']['os'].popen('id').read() }}",
            "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
            "{{ namespace.__init__ }}{{ joiner|attr('__init__') }}",
        ] {
            if let Ok(out) = render(t, "x", None, None) {
                assert!(!out.contains("uid="), "{out}");
            }
        }
        // deep expressions are refused before the parser recurses
        let deep = format!("{{{{ {} }}}}", vec!["a"; 200_000].join("~"));
        let e = render(&deep, "x", None, None).unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        let minus = format!("{{{{ {}1 }}}}", "-".repeat(200_000));
        assert!(render(&minus, "x", None, None).is_err());
        // large output stops at the output cap, before it is all in memory
        let bomb = "{% for i in range(100000) %}{{ 'x' * 50000000 }}{% endfor %}";
        let e = render(bomb, "x", None, None).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // a string doubled in a variable, never written, runs out of fuel
        let bomb = "{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
        let e = render(bomb, "x", None, None).unwrap_err();
        assert!(e.to_string().contains("fuel"), "{e}");
        // minijinja refuses a single string repeated past 100 MB
        assert!(render("{{ 'x' * 1000000000000 }}", "x", None, None).is_err());
    }

    /// Pieces of real and hostile templates; any sequence of them must render or fail
    /// quickly, never panic or hang.
    const PIECES: &[&str] = &[
        "{{ ",
        " }}",
        "{% ",
        " %}",
        "{%- ",
        " -%}",
        "for m in messages",
        "endfor",
        "for i in range(100000)",
        "if m.content",
        "endif",
        "else",
        "set ns = namespace(s='xy')",
        "set ns.s = ns.s ~ ns.s",
        "ns.s",
        "'x' * 9999999",
        " ~ ",
        " + ",
        "m.content",
        "(",
        ")",
        "[",
        "]",
        "|reverse",
        "|join",
        "|attr('__class__')",
        ".__class__",
        "cycler.__init__",
        "lipsum",
        "loop.index0",
        "raise_exception('no')",
        "{#",
        "#}",
        "messages",
        "'<|im_start|>'",
        "macro f(a)",
        "endmacro",
        "f(f(1))",
        "recursive",
        "loop(m)",
        "-",
        "1",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn any_piece_sequence_renders_or_fails_quickly(
            idx in proptest::collection::vec(0..PIECES.len(), 0..40)
        ) {
            let t: String = idx.iter().map(|&i| PIECES[i]).collect();
            let start = std::time::Instant::now();
            let _ = render(&t, "hi", Some("<s>"), Some("</s>"));
            proptest::prop_assert!(start.elapsed().as_secs() < 5, "{}", t);
        }
    }

    #[test]
    fn config_forms() {
        let list = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"}
        ]);
        assert_eq!(template_from_config(&list).as_deref(), Some("D"));
        assert_eq!(
            template_from_config(&serde_json::json!("S")).as_deref(),
            Some("S")
        );
    }
}
