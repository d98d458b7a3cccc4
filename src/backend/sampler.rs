//! Next-token sampling: greedy, or temperature -> top-k -> top-p (the order of HF's logits
//! warpers) then a draw from a seeded generator, so a seed reproduces a sequence exactly.

use crate::{Error, Result};

/// How the next token is drawn from the logits: greedy (temperature 0), or temperature, top-k and
/// top-p, with a seed, after the penalties.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// Seed of the draws (the same seed gives the same tokens on every backend).
    pub seed: u64,
    /// Repetition / presence / frequency penalties (off by default). A row with any of them on
    /// is sampled on the host from the penalized logits (`Sampler::sample_host`).
    pub penalties: Penalties,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, penalties: Penalties::default() }
    }
}

/// Logit penalties for tokens already seen, applied before temperature / top-k / top-p.
/// `repetition` is HF's / TGI's (prompt and generated tokens: a positive logit is divided by it,
/// a negative one multiplied); `presence` and `frequency` are OpenAI's (generated tokens only:
/// `logit -= presence·[count > 0] + frequency·count`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// HF's repetition penalty (1: off).
    pub repetition: f32,
    /// OpenAI's presence penalty (0: off).
    pub presence: f32,
    /// OpenAI's frequency penalty (0: off).
    pub frequency: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties { repetition: 1.0, presence: 0.0, frequency: 0.0 }
    }
}

impl Penalties {
    /// Whether every penalty is off.
    pub fn is_off(&self) -> bool {
        *self == Penalties::default()
    }

    /// Refuses values out of range (`Error::InvalidRequest` naming the field).
    pub fn validate(&self) -> Result<()> {
        if !(self.repetition > 0.0 && self.repetition <= 100.0) {
            return Err(Error::InvalidRequest { field: "repetition_penalty", msg: format!("repetition_penalty must be in (0, 100], got {}", self.repetition) });
        }
        for (name, v) in [("presence_penalty", self.presence), ("frequency_penalty", self.frequency)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::InvalidRequest { field: name, msg: format!("{name} must be in [-2, 2], got {v}") });
            }
        }
        Ok(())
    }
}

/// The log-probabilities of one sampled token: its own, and the `n` most likely tokens of the
/// same row (highest first), all `log_softmax` of the model's raw logits (before penalties and
/// temperature, as vLLM and OpenAI report them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's log-probability.
    pub logprob: f32,
    /// The most likely alternatives, as (token id, log-probability), best first.
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax(row)[token]` and the `n` largest entries, in f64 (max-shifted).
pub fn token_logprobs(row: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: usize| (row[i] as f64 - lse) as f32;
    let mut top = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..row.len() as u32).collect();
        let n = n.min(idx.len());
        // Highest logit first; ties by the lower id (stable for clients comparing runs).
        let order = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        if n < idx.len() {
            idx.select_nth_unstable_by(n - 1, order);
            idx.truncate(n);
        }
        idx.sort_unstable_by(order);
        top = idx.into_iter().map(|i| (i, lp(i as usize))).collect();
    }
    TokenLogprobs { logprob: lp(token as usize), top }
}

impl SamplingParams {
    /// Argmax every step.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Refuses values out of range (`Error::InvalidRequest` naming the field).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::InvalidRequest { field: "temperature", msg: format!("temperature must be >= 0, got {}", self.temperature) });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidRequest { field: "top_p", msg: format!("top_p must be in (0, 1], got {}", self.top_p) });
        }
        self.penalties.validate()
    }

    /// Whether this draws the argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// Index of the largest logit; the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens a constrained sequence may take next (structured output: `crate::constrain`):
/// one bit per token id, packed 32 to a `u32` (bit `t % 32` of word `t / 32`), as the mask a
/// device upload would carry. Ids at or past `len` are not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    words: std::sync::Arc<[u32]>,
    len: usize,
}

impl TokenMask {
    /// A mask of `len` ids from packed words (`words.len() >= len.div_ceil(32)`; bits past
    /// `len` are ignored).
    pub fn from_words(words: Vec<u32>, len: usize) -> Result<Self> {
        if words.len() < len.div_ceil(32) {
            return Err(Error::InvalidArgument(format!("a token mask of {len} ids needs {} words, got {}", len.div_ceil(32), words.len())));
        }
        Ok(TokenMask { words: words.into(), len })
    }

    /// A mask that allows exactly `ids` (those below `len`).
    pub fn only(ids: &[u32], len: usize) -> Self {
        let mut words = vec![0u32; len.div_ceil(32)];
        for &t in ids.iter().filter(|&&t| (t as usize) < len) {
            words[t as usize / 32] |= 1 << (t % 32);
        }
        TokenMask { words: words.into(), len }
    }

    /// Whether `token` may come next.
    pub fn allows(&self, token: u32) -> bool {
        let t = token as usize;
        t < self.len && self.words[t / 32] >> (t % 32) & 1 == 1
    }

    /// How many ids it allows.
    pub fn count(&self) -> usize {
        let full = self.len / 32;
        let mut n: usize = self.words[..full].iter().map(|w| w.count_ones() as usize).sum();
        if self.len % 32 != 0 {
            n += (self.words[full] & ((1u32 << (self.len % 32)) - 1)).count_ones() as usize;
        }
        n
    }

    /// The ids it covers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it covers no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The packed words.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// Sets every disallowed logit to `f32::MIN`: the lowest finite value (the sampling rule
    /// refuses non-finite rows), whose weight `exp((MIN - max) / T)` is 0 at any temperature,
    /// so no temperature, top-k or top-p can pick it while an allowed token is left.
    pub fn apply(&self, logits: &mut [f32]) {
        for (t, x) in logits.iter_mut().enumerate() {
            if !(t < self.len && self.words[t / 32] >> (t % 32) & 1 == 1) {
                *x = f32::MIN;
            }
        }
    }
}

/// One sequence's sampler: its parameters, penalties and log-probabilities, and the count of its
/// draws. Every backend draws by one rule (`backend::sampling::sample_row`, the device kernel's
/// twin) from one counter-based generator (draw `d` of seed `s` is the same number everywhere),
/// so a seed gives the same tokens on the CPU and on a GPU, up to their logits' rounding.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    draws: u64,
    /// The row issued for the token being sampled (`next_device_row`), not yet drawn on the host.
    pending: Option<crate::backend::sampling::SampleRow>,
    /// Report this many top alternatives with each token's log-probability (None: no logprobs).
    logprobs: Option<usize>,
    /// The last sampled token's log-probabilities, when `logprobs` is on.
    last_logprobs: Option<TokenLogprobs>,
    /// Generated tokens so far, by id (presence / frequency / repetition penalties).
    generated: std::collections::HashMap<u32, u32>,
    /// The prompt's distinct tokens, kept only for a repetition penalty.
    prompt: std::collections::HashSet<u32>,
    /// The tokens allowed next, for a constrained sequence (structured output).
    mask: Option<TokenMask>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplingParams) -> Self {
        Sampler { params, draws: 0, pending: None, logprobs: None, last_logprobs: None, generated: Default::default(), prompt: Default::default(), mask: None }
    }

    /// Also compute each sampled token's log-probability and its `top_n` alternatives.
    pub fn with_logprobs(mut self, top_n: Option<usize>) -> Self {
        self.logprobs = top_n;
        self
    }

    /// The prompt, for a repetition penalty (HF applies it to prompt and generated tokens).
    pub fn set_prompt(&mut self, ids: &[u32]) {
        if self.params.penalties.repetition != 1.0 {
            self.prompt = ids.iter().copied().collect();
        }
    }

    /// Records a token the sequence accepted (penalties count it from now on).
    pub fn observe(&mut self, token: u32) {
        if !self.params.penalties.is_off() {
            *self.generated.entry(token).or_default() += 1;
        }
    }

    /// Restricts the next draws to `mask` (None: no restriction), until it is set again.
    pub fn set_mask(&mut self, mask: Option<TokenMask>) {
        self.mask = mask;
    }

    /// The mask the next draw obeys.
    pub fn mask(&self) -> Option<&TokenMask> {
        self.mask.as_ref()
    }

    /// The row must come to the host after a device draw: for penalties, a token mask or
    /// log-probabilities.
    pub fn needs_host_row(&self) -> bool {
        self.logprobs.is_some() || !self.params.penalties.is_off() || self.mask.is_some()
    }

    /// `needs_host_row` for a device that applied this sampler's mask itself: penalties or
    /// log-probabilities only.
    pub fn needs_host_row_after_device_mask(&self) -> bool {
        self.logprobs.is_some() || !self.params.penalties.is_off()
    }

    /// `sample_host` after a device draw that applied this sampler's mask: the device's id
    /// stands unless penalties are on (then the host draws from the penalized, masked row).
    pub fn sample_host_after_device_mask(&mut self, row: &[f32], device_id: u32) -> u32 {
        self.host_part(row, Some(device_id), true)
    }

    /// The last sampled token's log-probabilities (taken: the next call gives None until the
    /// next sample).
    pub fn take_logprobs(&mut self) -> Option<TokenLogprobs> {
        self.last_logprobs.take()
    }

    /// The host's part of sampling one row of raw logits: with penalties or a mask on, the
    /// draw is made here from the adjusted row (`device_id` is ignored); otherwise `device_id`
    /// is kept (or, None, the host draws). Records the token's log-probabilities (of the raw
    /// row) when asked for.
    pub fn sample_host(&mut self, row: &[f32], device_id: Option<u32>) -> u32 {
        self.host_part(row, device_id, false)
    }

    /// `sample_host`, knowing whether the device's draw already obeyed the mask.
    fn host_part(&mut self, row: &[f32], device_id: Option<u32>, device_masked: bool) -> u32 {
        let id = match device_id {
            Some(id) if self.params.penalties.is_off() && (self.mask.is_none() || device_masked) => id,
            _ => self.sample(row),
        };
        if let Some(n) = self.logprobs {
            let ok = id != crate::backend::sampling::NON_FINITE && (id as usize) < row.len();
            self.last_logprobs = ok.then(|| token_logprobs(row, id, n));
        }
        id
    }

    /// `logits` with this sequence's penalties and mask applied (a copy; None when both are off).
    fn adjusted(&self, logits: &[f32]) -> Option<Vec<f32>> {
        let mut l = self.penalized(logits)?;
        if let Some(m) = &self.mask {
            m.apply(&mut l);
        }
        Some(l)
    }

    /// `logits` with this sequence's penalties applied (a copy; None when they and the mask are
    /// off).
    fn penalized(&self, logits: &[f32]) -> Option<Vec<f32>> {
        let p = self.params.penalties;
        if p.is_off() {
            return self.mask.as_ref().map(|_| logits.to_vec());
        }
        let mut l = logits.to_vec();
        if p.repetition != 1.0 {
            for &t in self.prompt.iter().chain(self.generated.keys()) {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / p.repetition } else { *x * p.repetition };
                }
            }
        }
        for (&t, &c) in &self.generated {
            if let Some(x) = l.get_mut(t as usize) {
                *x -= p.presence + p.frequency * c as f32;
            }
        }
        Some(l)
    }

    /// Its parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The parameters of this sequence's next draw (and counts the draw): what the device
    /// samples with, and what a host draw for the same token (`sample`) uses.
    pub fn next_device_row(&mut self) -> crate::backend::sampling::SampleRow {
        let row = self.issue_row();
        self.pending = Some(row);
        row
    }

    /// The parameters of the next draw, counted.
    fn issue_row(&mut self) -> crate::backend::sampling::SampleRow {
        let d = self.draws;
        self.draws += 1;
        let p = &self.params;
        crate::backend::sampling::SampleRow { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, seed: p.seed, draw: d }
    }

    /// A draw on the host from the logits after this sequence's penalties, by the device's rule
    /// (`sampling::sample_row`) with the row issued for this token (a new one if none was).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let row = match self.pending.take() {
            Some(r) => r,
            None => self.issue_row(),
        };
        // A non-finite raw row fails the sequence even where the mask would hide the bad value.
        if self.mask.is_some() && logits.iter().any(|v| !v.is_finite()) {
            return crate::backend::sampling::NON_FINITE;
        }
        let adjusted = self.adjusted(logits);
        crate::backend::sampling::sample_row(adjusted.as_deref().unwrap_or(logits), &row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, -2.0, 0.5]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let p = SamplingParams { temperature: 1.0, top_k: 5, top_p: 1.0, seed: 42, ..Default::default() };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        // top-k keeps the tokens at or above the k-th largest logit (ties at it included, as
        // the device rule does: here six tokens share the largest value).
        let mut sorted = logits.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let kth = sorted[4];
        assert!(a.iter().all(|&t| logits[t as usize] >= kth), "{a:?}");
        // Different seeds give different draws somewhere.
        let c: Vec<u32> = {
            let mut s = Sampler::new(SamplingParams { seed: 7, ..p });
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_ne!(a, c);
    }

    #[test]
    fn a_mask_restricts_every_draw_and_needs_the_host_row() {
        // Fresh random logits over an odd vocabulary (not a multiple of 32).
        let mut rng = crate::rng::SplitMix64::new(91);
        let row: Vec<f32> = (0..1001).map(|_| rng.uniform_in(-4.0, 4.0)).collect();
        let allowed = [3u32, 77, 500, 1000];
        let mask = TokenMask::only(&allowed, row.len());
        assert_eq!(mask.count(), 4);
        assert!(mask.allows(1000) && !mask.allows(1001) && !mask.allows(0));
        let best = *allowed.iter().max_by(|a, b| row[**a as usize].total_cmp(&row[**b as usize])).unwrap();
        // Greedy: the best allowed token, whatever the device drew.
        let mut g = Sampler::new(SamplingParams::greedy());
        g.set_mask(Some(mask.clone()));
        assert!(g.needs_host_row());
        assert_eq!(g.sample_host(&row, Some(argmax(&row))), best);
        // Sampled with a seed: every draw is allowed.
        let mut s = Sampler::new(SamplingParams { temperature: 1.5, top_k: 0, top_p: 1.0, seed: 5, ..Default::default() });
        s.set_mask(Some(mask.clone()));
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&row)).collect();
        assert!(draws.iter().all(|t| allowed.contains(t)), "{draws:?}");
        assert!(allowed.iter().filter(|t| draws.contains(t)).count() >= 2, "temperature 1.5 should reach more than one allowed token");
        // With a penalty on the best allowed token, the mask still holds.
        let mut p = Sampler::new(SamplingParams { penalties: Penalties { presence: 100.0, ..Default::default() }, ..Default::default() });
        p.set_mask(Some(mask));
        p.observe(best);
        let t = p.sample(&row);
        assert!(allowed.contains(&t) && t != best);
        // Unset: the device's id stands again.
        p.set_mask(None);
        let mut off = Sampler::new(SamplingParams::greedy());
        off.set_mask(None);
        assert_eq!(off.sample_host(&row, Some(7)), 7);
        assert!(TokenMask::from_words(vec![0; 31], 1001).is_err());
        // A NaN in the raw row is still reported, also where the mask would hide it.
        let mut bad = row.clone();
        bad[0] = f32::NAN;
        let mut m = Sampler::new(SamplingParams::greedy());
        m.set_mask(Some(TokenMask::only(&[3], bad.len())));
        assert_eq!(m.sample(&bad), crate::backend::sampling::NON_FINITE);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let logits = [0.0, 5.0, 1.0, 4.9];
        let mut s = Sampler::new(SamplingParams { temperature: 0.7, top_k: 0, top_p: 1e-6, seed: 1, ..Default::default() });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits), 1);
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temperature: f32::NAN, ..Default::default() }.validate().is_err());
        for p in [
            Penalties { repetition: 0.0, ..Default::default() },
            Penalties { presence: 2.5, ..Default::default() },
            Penalties { frequency: f32::NAN, ..Default::default() },
        ] {
            assert!(SamplingParams { penalties: p, ..Default::default() }.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn logprobs_are_log_softmax_with_the_top_alternatives() {
        let row: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1013) as f32 * 0.013 - 6.0).collect();
        let lp = token_logprobs(&row, 17, 5);
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((lp.logprob as f64 - (row[17] as f64 - z.ln())).abs() < 1e-5);
        let mut sorted: Vec<usize> = (0..row.len()).collect();
        sorted.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
        assert_eq!(lp.top.iter().map(|t| t.0 as usize).collect::<Vec<_>>(), sorted[..5].to_vec());
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f64 = row.iter().map(|&x| ((x as f64) - z.ln()).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn penalties_push_seen_tokens_down() {
        let row = [2.0f32, 1.9, -1.0, 0.5];
        // Greedy picks 0; after seeing 0 with a presence penalty of 0.5 it picks 1.
        let mut s = Sampler::new(SamplingParams { penalties: Penalties { presence: 0.5, ..Default::default() }, ..Default::default() });
        assert_eq!(s.sample_host(&row, Some(0)), 0);
        s.observe(0);
        assert_eq!(s.sample_host(&row, Some(0)), 1, "the device's id is overridden when penalties are on");
        // Frequency scales with the count: 0 seen twice at 0.04 -> 2.0 - 0.08 < 1.9 + 0.
        let mut f = Sampler::new(SamplingParams { penalties: Penalties { frequency: 0.04, ..Default::default() }, ..Default::default() });
        f.observe(0);
        assert_eq!(f.sample(&row), 0);
        f.observe(0);
        f.observe(0);
        assert_eq!(f.sample(&row), 1);
        // Repetition (HF rule) on a prompt token: 2.0 / 1.1 < 1.9.
        let mut r = Sampler::new(SamplingParams { penalties: Penalties { repetition: 1.1, ..Default::default() }, ..Default::default() });
        r.set_prompt(&[0, 2]);
        assert_eq!(r.sample(&row), 1);
        // A negative logit is multiplied: -1.0 * 1.1.
        assert_eq!(r.penalized(&row).unwrap()[2], -1.1);
        // Off: the device's id stands and the row is not needed.
        let mut off = Sampler::new(SamplingParams::greedy());
        assert!(!off.needs_host_row());
        assert_eq!(off.sample_host(&row, Some(3)), 3);
        // Logprobs only: the device's id stands, its log-probability is recorded once.
        let mut lp = Sampler::new(SamplingParams::greedy()).with_logprobs(Some(2));
        assert!(lp.needs_host_row());
        assert_eq!(lp.sample_host(&row, Some(3)), 3);
        let got = lp.take_logprobs().unwrap();
        assert_eq!(got, token_logprobs(&row, 3, 2));
        assert_eq!(got.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(lp.take_logprobs().is_none());
    }
}
