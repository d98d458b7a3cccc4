//! Stop strings over streamed text: the text is released only up to where no stop string could
//! still begin, so a client never sees part of a stop string.

/// Finds stop strings in streamed text and holds back what could still be the start of one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), text: String::new(), emitted: 0 }
    }

    /// Adds decoded text. Returns (text safe to emit now, whether a stop string was hit). After a
    /// hit, the text is cut before the stop string.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        self.text.push_str(delta);
        // Search only where a new match can start: the old held-back tail plus the delta.
        let search_from = self.emitted;
        let hit = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str()).map(|i| search_from + i)).min();
        if let Some(at) = hit {
            self.text.truncate(at);
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of a stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let upto = self.text.len() - hold;
        let upto = if upto < self.emitted { self.emitted } else { upto };
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// Releases what was held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// All text pushed so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop_and_cuts_at_hit() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" E"), (" ".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("Dx"), ("".into(), true));
        assert_eq!(m.text(), "Hello ");
    }

    #[test]
    fn no_stops_passes_everything() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("a\n"), ("a\n".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST"), ("".into(), false));
        assert_eq!(m.push("AR"), ("STAR".into(), false));
        assert_eq!(m.push("S"), ("".into(), false));
        assert_eq!(m.flush(), "S");
    }
}
