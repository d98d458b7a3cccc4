//! Progress bars (indicatif) for long work, hidden when not asked for or not on a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(show: bool, len: u64, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(msg);
    b
}
