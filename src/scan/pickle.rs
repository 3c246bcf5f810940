//! Judging pickles: every global a pickle imports is rated by
//! [`crate::formats::pickle::classify`] (allowlisted, dangerous, unknown), every replay
//! fault becomes a malformed finding, and a PyTorch checkpoint whose pickles are clean is
//! opened to check its structure and tensor values.

use std::collections::HashMap;
use std::path::Path;

use crate::finding::{Evidence, Finding, Severity};
use crate::formats::pickle::{Call, CallOp, GlobalClass, GlobalName, Node};
use crate::formats::pytorch::{self, Container, PickleEntry};

use super::{
    check_weights, structure_finding, RULE_DANGEROUS_GLOBAL, RULE_DYNAMIC_GLOBAL,
    RULE_PICKLE_FORMAT, RULE_PICKLE_MALFORMED, RULE_REMOTE_CODE, RULE_UNEXPECTED_FILE,
    RULE_UNKNOWN_GLOBAL,
};

/// Zip entry extensions that are programs rather than data.
/// Globals listed one by one per pickle; the rest are summed up in one finding, so a
/// pickle importing a million names yields a readable report.
const MAX_LISTED_GLOBALS: usize = 64;

const CODE_ENTRY_EXTENSIONS: &[&str] = &[".py", ".pyc", ".so", ".dll", ".dylib", ".exe", ".sh"];

/// Scan a zip archive or pickle file: its pickles, its entries, and (for a PyTorch
/// checkpoint with only allowlisted globals) its tensors.
pub(super) fn scan_pickles(abs: &Path, rel: &Path, out: &mut Vec<Finding>) {
    let file = match pytorch::read_pickles(abs) {
        Ok(f) => f,
        Err(e) => {
            out.push(structure_finding(&e, rel));
            return;
        }
    };
    let before = out.len();
    for (i, p) in file.pickles.iter().enumerate() {
        // Trailing pickles in a plain file are only read by code that calls
        // `pickle.load` again; a fault there is less certain to matter.
        let trailing = file.container == Container::Pickle && i > 0;
        judge(p, rel, trailing, out);
    }
    let refused = out[before..].iter().any(|f| {
        f.rule == RULE_DANGEROUS_GLOBAL
            || f.rule == RULE_DYNAMIC_GLOBAL
            || f.rule == RULE_UNKNOWN_GLOBAL
            || f.rule == RULE_PICKLE_MALFORMED
    });
    for name in &file.entries {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".py") || lower.ends_with(".pyc") {
            out.push(
                Finding::new(
                    RULE_REMOTE_CODE,
                    Severity::Error,
                    format!("archive `{}` holds Python code `{name}`", rel.display()),
                )
                .at(Evidence::file(rel).with_key(name.clone()))
                .hint("a weights archive needs no code; TorchScript archives are programs, not checkpoints"),
            );
        } else if CODE_ENTRY_EXTENSIONS.iter().any(|e| lower.ends_with(e)) {
            out.push(
                Finding::new(
                    RULE_UNEXPECTED_FILE,
                    Severity::Error,
                    format!("archive `{}` holds the executable `{name}`", rel.display()),
                )
                .at(Evidence::file(rel).with_key(name.clone())),
            );
        }
    }
    let is_checkpoint = match file.container {
        Container::Zip => file.torch_prefix.is_some(),
        Container::Legacy => true,
        Container::Pickle => false,
    };
    if file.container == Container::Zip && !is_checkpoint {
        out.push(
            Finding::new(
                RULE_UNEXPECTED_FILE,
                Severity::Warning,
                format!(
                    "`{}` is a zip archive but not a PyTorch checkpoint; only its pickle entries were checked",
                    rel.display()
                ),
            )
            .at(Evidence::file(rel))
            .hint("unpack it and scan the contents, or remove it from the model"),
        );
    }
    if is_checkpoint || file.container == Container::Pickle {
        let what = match file.container {
            Container::Zip => "a PyTorch checkpoint (zip of pickles)",
            Container::Legacy => "a legacy (pre-1.6) PyTorch checkpoint",
            Container::Pickle => "a pickle",
        };
        out.push(
            Finding::new(
                RULE_PICKLE_FORMAT,
                Severity::Note,
                if refused {
                    format!(
                        "`{}` is {what}: `torch.load(weights_only=False)` or `pickle.load` would import and run the globals reported for it",
                        rel.display()
                    )
                } else {
                    format!(
                        "`{}` is {what}; it imports only tensor-rebuild globals, but pickle is a format that can run code when loaded",
                        rel.display()
                    )
                },
            )
            .at(Evidence::file(rel))
            .hint(if is_checkpoint {
                format!(
                    "prefer safetensors; `modelgate convert {} -o model.safetensors` reads only allowlisted globals",
                    rel.display()
                )
            } else {
                "prefer safetensors or JSON; never unpickle a file from an untrusted source".to_owned()
            }),
        );
    }
    // A refused checkpoint is not opened: `pytorch::open` would only repeat the refusal.
    if is_checkpoint && !refused {
        check_weights(pytorch::open(abs), rel, out);
    }
}

fn where_in(p: &PickleEntry, offset: u64) -> String {
    match &p.entry {
        Some(e) => format!("at byte {offset} of `{e}`"),
        None => format!("at byte {offset}"),
    }
}

fn evidence(p: &PickleEntry, rel: &Path, key: String, offset: u64) -> Evidence {
    let ev = Evidence::file(rel).with_key(key);
    match p.file_offset(offset) {
        Some(o) => ev.with_offset(o),
        None => ev,
    }
}

/// Findings for one replayed pickle: one per distinct global that is not allowlisted,
/// and one if the replay faulted.
fn judge(p: &PickleEntry, rel: &Path, trailing: bool, out: &mut Vec<Finding>) {
    let a = &p.analysis;
    // Group references by name, keeping first-appearance order, and find each global's
    // first direct call in one pass over the calls (a hostile pickle can hold millions).
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (i, g) in a.globals.iter().enumerate() {
        let q = g.qualified();
        match group_of.get(&q) {
            Some(&k) => groups[k].1.push(i),
            None => {
                group_of.insert(q.clone(), groups.len());
                groups.push((q, vec![i]));
            }
        }
    }
    let mut first_call: HashMap<usize, &Call> = HashMap::new();
    for c in &a.calls {
        if c.op == CallOp::Build {
            continue;
        }
        if let Some(Node::Global(g)) = a.node(c.callee) {
            first_call.entry(*g).or_insert(c);
        }
    }
    let mut listed = 0usize;
    // (dangerous or dynamic, unknown and called, unknown and only referenced)
    let mut unlisted = (0usize, 0usize, 0usize);
    for (q, refs) in groups {
        let first = &a.globals[refs[0]];
        let class = crate::formats::pickle::classify_ref(first);
        let call = refs
            .iter()
            .filter_map(|g| first_call.get(g))
            .min_by_key(|c| c.offset);
        // Calling an unknown global runs its constructor or function at load time, which
        // is what an exploit needs; a global that is only referenced is inert data.
        let unknown = if call.is_some() {
            Severity::Error
        } else {
            Severity::Warning
        };
        let (rule, severity, what) = match (&first.name, class) {
            (_, GlobalClass::Allowed) => continue,
            (GlobalName::Dynamic(why), _) => (
                RULE_DYNAMIC_GLOBAL,
                Severity::Error,
                format!("a global whose name is computed at load time ({why})"),
            ),
            (_, GlobalClass::Dangerous(why)) => (
                RULE_DANGEROUS_GLOBAL,
                Severity::Error,
                format!("`{q}`, which {why}"),
            ),
            (GlobalName::Extension(code), _) => (
                RULE_UNKNOWN_GLOBAL,
                unknown,
                format!("extension code {code}, a global named through the `copyreg` registry"),
            ),
            (_, GlobalClass::Unknown) => (
                RULE_UNKNOWN_GLOBAL,
                unknown,
                format!("`{q}`, which is not on the allowlist of tensor-rebuild globals"),
            ),
        };
        if listed == MAX_LISTED_GLOBALS {
            match (rule, severity) {
                (RULE_UNKNOWN_GLOBAL, Severity::Error) => unlisted.1 += 1,
                (RULE_UNKNOWN_GLOBAL, _) => unlisted.2 += 1,
                _ => unlisted.0 += 1,
            }
            continue;
        }
        listed += 1;
        let mut msg = format!(
            "pickle imports {what} ({} {}",
            first.op.as_str(),
            where_in(p, first.offset)
        );
        if refs.len() > 1 {
            msg.push_str(&format!(", {} times", refs.len()));
        }
        if let Some(c) = call {
            let verb = match c.op {
                CallOp::NewObj | CallOp::NewObjEx | CallOp::Obj | CallOp::Inst => "instantiated",
                _ => "called",
            };
            msg.push_str(&format!(
                "; {verb} by {} {}",
                c.op.as_str(),
                where_in(p, c.offset)
            ));
        }
        msg.push(')');
        let hint = if rule == RULE_UNKNOWN_GLOBAL && severity == Severity::Error {
            "the pickle calls this class or function while loading; load it only in a sandbox, or get safetensors weights".to_owned()
        } else if severity == Severity::Error {
            "do not load this file with `torch.load`, `pickle` or `joblib`; get safetensors weights from a trusted source, or convert in an isolated sandbox".to_owned()
        } else {
            "modelgate reads only tensor-rebuild globals; load this file only in a sandbox if you trust where the class comes from".to_owned()
        };
        out.push(
            Finding::new(rule, severity, msg)
                .at(evidence(p, rel, q, first.offset))
                .hint(hint),
        );
    }
    if unlisted.0 + unlisted.1 + unlisted.2 > 0 {
        let (rule, severity) = if unlisted.0 > 0 {
            (RULE_DANGEROUS_GLOBAL, Severity::Error)
        } else if unlisted.1 > 0 {
            (RULE_UNKNOWN_GLOBAL, Severity::Error)
        } else {
            (RULE_UNKNOWN_GLOBAL, Severity::Warning)
        };
        let within = p
            .entry
            .as_ref()
            .map(|e| format!(" in `{e}`"))
            .unwrap_or_default();
        out.push(
            Finding::new(
                rule,
                severity,
                format!(
                    "pickle{within} imports {} more globals outside the allowlist ({} dangerous, {} unknown and called, {} unknown and only referenced), not listed one by one",
                    unlisted.0 + unlisted.1 + unlisted.2,
                    unlisted.0,
                    unlisted.1,
                    unlisted.2
                ),
            )
            .at(Evidence::file(rel)),
        );
    }
    if let Some(f) = &a.fault {
        let (severity, lead) = if trailing {
            (
                Severity::Warning,
                "data after a complete pickle is not a valid pickle",
            )
        } else {
            (Severity::Error, "pickle is malformed")
        };
        let ev = match p.file_offset(f.offset) {
            Some(o) => Evidence::file(rel).with_offset(o),
            None => Evidence::file(rel),
        };
        out.push(
            Finding::new(
                RULE_PICKLE_MALFORMED,
                severity,
                format!("{lead}: {} {}", f.message, where_in(p, f.offset)),
            )
            .at(ev)
            .hint("a loader stops here after running every opcode before it; the file cannot be fully vetted"),
        );
    }
}
