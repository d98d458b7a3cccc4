//! Progress bars for long work (weights loading, quantizing, converting, eval), hidden when not
//! asked for or not on a terminal. With the `progress` feature they are indicatif's; without it
//! (`default-features = false`, an embedder's build) the same calls draw nothing, so library code
//! never asks which build it is in.

#[cfg(feature = "progress")]
use indicatif::{ProgressBar, ProgressStyle};

/// One progress bar (or nothing, when hidden or built without the `progress` feature).
#[derive(Debug, Clone)]
pub struct Bar {
    #[cfg(feature = "progress")]
    inner: ProgressBar,
}

/// A bar of `len` steps labelled `msg`, drawn on stderr when `show` (else hidden).
pub fn bar(show: bool, len: u64, msg: &str) -> Bar {
    Bar::new(show, len, msg, "{msg:>16} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}")
}

/// A bar counting bytes (`len` of them), for conversions of large files.
pub fn bytes_bar(show: bool, len: u64, msg: &str) -> Bar {
    Bar::new(show, len, msg, "{msg:>24} [{bar:40}] {bytes}/{total_bytes} {elapsed_precise} eta {eta}")
}

impl Bar {
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    fn new(show: bool, len: u64, msg: &str, template: &str) -> Bar {
        #[cfg(feature = "progress")]
        {
            if !show {
                return Bar { inner: ProgressBar::hidden() };
            }
            let b = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(template) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(msg.to_string());
            Bar { inner: b }
        }
        #[cfg(not(feature = "progress"))]
        Bar {}
    }

    /// A bar that never draws.
    pub fn hidden() -> Bar {
        Bar::new(false, 0, "", "")
    }

    /// Advances by `n` steps.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        self.inner.inc(n);
    }

    /// Moves to step `pos`.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub fn set_position(&self, pos: u64) {
        #[cfg(feature = "progress")]
        self.inner.set_position(pos);
    }

    /// Replaces the label.
    #[cfg_attr(not(feature = "progress"), allow(unused_variables))]
    pub fn set_message(&self, msg: impl Into<String>) {
        #[cfg(feature = "progress")]
        self.inner.set_message(msg.into());
    }

    /// Removes the bar from the terminal.
    pub fn finish_and_clear(&self) {
        #[cfg(feature = "progress")]
        self.inner.finish_and_clear();
    }
}
