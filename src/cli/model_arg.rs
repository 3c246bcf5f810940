//! `hf://ORG/NAME[@REVISION]` wherever a model path is accepted: one resolve call per
//! subcommand turns it into a local folder (or file) of verified files, with progress
//! bars on stderr while downloading. Local paths pass through untouched.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use crate::hub::{self, HubRef, Provenance, Selection, Settings, View};

/// `--include` / `--exclude`, for `hf://` models.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HubArgs {
    /// With an `hf://` model: take only the repository's files matching this glob
    /// (repeatable; e.g. `*Q4_K_M.gguf`)
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// With an `hf://` model: leave out the files matching this glob (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
}

/// A model argument resolved from the Hub: keeps its temporary folder alive.
#[derive(Debug, Default)]
pub struct HubModel {
    _view: Option<View>,
    /// Where the model came from, for reports (`None` for a local path).
    pub provenance: Option<Provenance>,
}

impl HubModel {
    /// How reports name the model: `hf://ORG/NAME@REVISION` for a Hub model (not its
    /// temporary local copy), else the path.
    pub fn subject(&self, path: &std::path::Path) -> String {
        match &self.provenance {
            Some(p) => p.requested_uri(),
            None => path.display().to_string(),
        }
    }

    /// Name a gate report's subject as [`HubModel::subject`] does and, for a Hub model,
    /// add its provenance to the details (`details.source`).
    pub fn annotate(&self, report: &mut crate::report::GateReport, path: &std::path::Path) {
        report.subject = self.subject(path);
        let Some(p) = &self.provenance else { return };
        let Ok(source) = serde_json::to_value(p) else {
            return;
        };
        match &mut report.details {
            Some(serde_json::Value::Object(d)) => {
                d.insert("source".into(), source);
            }
            Some(_) => {}
            None => report.details = Some(serde_json::json!({ "source": source })),
        }
    }
}

/// Resolve `path` in place when it is `hf://...`: afterwards it names the local copy. The
/// returned value must live as long as `path` is used.
pub fn resolve(path: &mut PathBuf, args: &HubArgs) -> anyhow::Result<HubModel> {
    let Some(parsed) = path.to_str().and_then(HubRef::parse) else {
        if !args.include.is_empty() || !args.exclude.is_empty() {
            return Err(super::hint(
                anyhow::anyhow!("`--include` and `--exclude` apply only to `hf://` models"),
                "give the model as `hf://ORG/NAME[@REVISION]`, or drop the globs",
            ));
        }
        return Ok(HubModel::default());
    };
    let r = parsed.map_err(hub_error)?;
    let sel = Selection::new(&args.include, &args.exclude).map_err(hub_error)?;
    let settings = Settings::from_env().map_err(hub_error)?;
    let mut bars = Bars::default();
    let snapshot = hub::resolve(&r, &sel, &settings, &mut bars).map_err(hub_error)?;
    let view = View::create(&snapshot, &settings.cache_root).map_err(hub_error)?;
    *path = view.path().to_owned();
    Ok(HubModel {
        _view: Some(view),
        provenance: Some(snapshot.provenance),
    })
}

/// [`resolve`] for `sign` and `verify`, whose signature defaults to a file beside the
/// model: a Hub model's local copy is temporary, so the signature must be named.
pub fn resolve_signed(
    path: &mut PathBuf,
    args: &HubArgs,
    signature_named: bool,
) -> anyhow::Result<HubModel> {
    let is_hub = path
        .to_str()
        .is_some_and(|p| p.starts_with(hub::spec::SCHEME));
    if is_hub && !signature_named {
        return Err(super::hint(
            anyhow::anyhow!(
                "`{}` is a hub model, so its signature cannot be kept beside it",
                path.display()
            ),
            "name the signature file with `--signature FILE`",
        ));
    }
    resolve(path, args)
}

/// [`resolve`] for two models (`parity REFERENCE CANDIDATE`): the globs apply to each
/// one given as `hf://`.
pub fn resolve_pair(
    a: &mut PathBuf,
    b: &mut PathBuf,
    args: &HubArgs,
) -> anyhow::Result<(HubModel, HubModel)> {
    let is_hub = |p: &PathBuf| p.to_str().is_some_and(|p| p.starts_with(hub::spec::SCHEME));
    // With no hub model at all, the globs go to both, so that `resolve` refuses them.
    let none = HubArgs::default();
    let any = is_hub(a) || is_hub(b);
    let (ga, gb) = (
        if is_hub(a) || !any { args } else { &none },
        if is_hub(b) || !any { args } else { &none },
    );
    Ok((resolve(a, ga)?, resolve(b, gb)?))
}

fn hub_error(e: hub::HubError) -> anyhow::Error {
    match e.hint() {
        Some(h) => super::hint(e, h),
        None => e.into(),
    }
}

/// One progress bar per downloaded file, on stderr (hidden when it is not a terminal).
#[derive(Default)]
struct Bars {
    bar: Option<ProgressBar>,
}

impl hub::Progress for Bars {
    fn start(&mut self, file: &str, size: u64, done: u64) {
        let bar = ProgressBar::new(size);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(file.to_owned());
        bar.set_position(done);
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
