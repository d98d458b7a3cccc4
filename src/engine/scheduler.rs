//! The scheduling policy of one engine step, as a pure function of (running sequences, waiting
//! queues, free KV blocks): which sequences are preempted, which are admitted, and how many
//! tokens each sequence feeds this step. The engine thread carries the plan out.
//!
//! Policy (iteration-level continuous batching, as vLLM / LoRAX):
//! 1. Decodes first: every running sequence that is decoding feeds one token. When the KV
//!    cache cannot hold the decodes' new tokens, the youngest running sequences are preempted
//!    (their blocks freed; the engine requeues them to be recomputed later) until it can.
//! 2. Running prefills (prompts admitted earlier, not fully computed) take chunks of what is
//!    left of the step's token budget, oldest first, so a long prompt never stalls decodes.
//! 3. Admission: waiting sequences, taken round-robin over the adapters' queues (the engine
//!    rotates the first queue every step), are admitted while the budget, the running limit,
//!    the active-adapter limit and the free blocks allow; a sequence's whole prompt must fit
//!    (with a small reserve of blocks left for the running decodes). Admission stops at the
//!    first candidate that does not fit, so a large request or a new adapter is never passed
//!    over forever. A prompt whose leading blocks are in the prefix cache (`kv::prefix`) costs
//!    only its other tokens of the budget, and the cached blocks that running sequences use
//!    cost no free blocks. Queues whose adapter is still loading are not given to the planner at all,
//!    so they block nobody.

use std::collections::BTreeSet;

/// A sequence's id.
pub type SeqId = u64;

/// What one step may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tokens fed through the model per step (decode tokens + prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences holding KV blocks at once.
    pub max_running: usize,
    /// Distinct adapters (the base counts as one) among the running sequences.
    pub max_active_adapters: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks left free when admitting while others run, so running decodes can grow a while
    /// before anything must be preempted.
    pub watermark_blocks: usize,
}

/// A running sequence as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningView<'a> {
    /// The sequence.
    pub id: SeqId,
    /// Adapter key ("" = the base).
    pub adapter: &'a str,
    /// Tokens whose K/V are in the cache.
    pub kv_len: usize,
    /// Tokens known but not yet in the cache: 1 when decoding, more while (re)computing a prompt.
    pub pending: usize,
    /// Blocks the sequence holds.
    pub blocks: usize,
}

/// A waiting sequence: `tokens` to compute once admitted (prompt, plus the tokens generated
/// before a preemption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingView<'a> {
    /// The sequence.
    pub id: SeqId,
    /// Adapter key ("" = the base).
    pub adapter: &'a str,
    /// Tokens to compute.
    pub tokens: usize,
    /// Leading tokens whose K/V the prefix cache holds (full blocks; always below `tokens`):
    /// admission computes only the rest.
    pub cached_tokens: usize,
    /// Of those blocks, the ones running sequences use now: shared, so they take nothing from
    /// the free blocks (a cached block no one uses counts as free, and taking it uses it up).
    pub shared_blocks: usize,
}

/// One step's plan: which sequences are preempted, admitted, and how many tokens each computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running sequences to free and requeue, youngest first.
    pub preempt: Vec<SeqId>,
    /// Waiting sequences to admit (their whole `tokens` reserved), in admission order.
    pub admit: Vec<SeqId>,
    /// (sequence, tokens fed this step), decodes first, then prefill chunks.
    pub work: Vec<(SeqId, usize)>,
}

impl Plan {
    /// Tokens the step computes.
    pub fn tokens(&self) -> usize {
        self.work.iter().map(|w| w.1).sum()
    }
}

fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// Plans one step. `running` is in admission order (oldest first); `waiting` holds one queue
/// per adapter whose adapter is ready, each in queue order, the queue to serve first first.
pub fn plan_step(limits: &Limits, running: &[RunningView<'_>], waiting: &[Vec<WaitingView<'_>>], free_blocks: usize) -> Plan {
    let bs = limits.block_size;
    let mut plan = Plan::default();
    let mut free = free_blocks;
    let mut budget = limits.max_batch_tokens;
    let mut alive: Vec<&RunningView<'_>> = running.iter().collect();
    let decode_need = |r: &RunningView<'_>| blocks_for(r.kv_len + 1, bs).saturating_sub(r.blocks);

    // 1. Decodes, preempting the youngest until their new blocks fit.
    loop {
        let need: usize = alive.iter().filter(|r| r.pending == 1).map(|r| decode_need(r)).sum();
        if need <= free {
            break;
        }
        let Some(victim) = alive.pop() else { break };
        free += victim.blocks;
        plan.preempt.push(victim.id);
    }
    for r in alive.iter().filter(|r| r.pending == 1) {
        if budget == 0 {
            break;
        }
        free -= decode_need(r);
        budget -= 1;
        plan.work.push((r.id, 1));
    }

    // 2. Chunks of running prefills, oldest first.
    for r in alive.iter().filter(|r| r.pending > 1) {
        // Room in the blocks it holds plus what is free (admission reserved the whole prompt,
        // so normally the first term covers it).
        let room = (r.blocks + free) * bs - r.kv_len;
        let n = r.pending.min(budget).min(room);
        if n == 0 {
            continue;
        }
        free -= blocks_for(r.kv_len + n, bs).saturating_sub(r.blocks);
        budget -= n;
        plan.work.push((r.id, n));
    }

    // 3. Admission, round-robin over the adapters' queues.
    let mut n_running = alive.len();
    let mut active: BTreeSet<&str> = alive.iter().map(|r| r.adapter).collect();
    let depth = waiting.iter().map(Vec::len).max().unwrap_or(0);
    'admit: for k in 0..depth {
        for queue in waiting {
            let Some(w) = queue.get(k) else { continue };
            if budget == 0 || n_running >= limits.max_running {
                break 'admit;
            }
            if !active.contains(w.adapter) && active.len() >= limits.max_active_adapters {
                break 'admit;
            }
            let need = blocks_for(w.tokens, bs).saturating_sub(w.shared_blocks);
            let reserve = if n_running > 0 { limits.watermark_blocks } else { 0 };
            if need + reserve > free {
                break 'admit;
            }
            free -= need;
            n_running += 1;
            active.insert(w.adapter);
            let n = w.tokens.saturating_sub(w.cached_tokens).max(1).min(budget);
            budget -= n;
            plan.admit.push(w.id);
            plan.work.push((w.id, n));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits { max_batch_tokens: 64, max_running: 8, max_active_adapters: 3, block_size: 16, watermark_blocks: 1 };

    fn run(id: SeqId, adapter: &str, kv_len: usize, pending: usize) -> RunningView<'_> {
        // A decode's next token is not reserved yet; a prompt was reserved whole at admission.
        let blocks = if pending == 1 { blocks_for(kv_len, 16) } else { blocks_for(kv_len + pending, 16) };
        RunningView { id, adapter, kv_len, pending, blocks }
    }
    fn wait(id: SeqId, adapter: &str, tokens: usize) -> WaitingView<'_> {
        WaitingView { id, adapter, tokens, cached_tokens: 0, shared_blocks: 0 }
    }

    #[test]
    fn decodes_first_then_prefill_chunks_fill_the_budget() {
        // Two decodes, one long prompt half done, one waiting prompt.
        let running = [run(1, "", 20, 1), run(2, "a", 5, 200), run(3, "", 40, 1)];
        let waiting = vec![vec![wait(4, "b", 30)]];
        let p = plan_step(&LIM, &running, &waiting, 100);
        assert_eq!(p.work, vec![(1, 1), (3, 1), (2, 62)]);
        assert!(p.admit.is_empty(), "no budget left for admission: {p:?}");
        assert_eq!(p.tokens(), 64);
    }

    #[test]
    fn admission_round_robins_over_adapters() {
        let lim = Limits { max_batch_tokens: 1000, ..LIM };
        let waiting = vec![vec![wait(1, "a", 10), wait(2, "a", 10), wait(3, "a", 10)], vec![wait(4, "b", 10)], vec![wait(5, "", 10), wait(6, "", 10)]];
        let p = plan_step(&lim, &[], &waiting, 100);
        assert_eq!(p.admit, vec![1, 4, 5, 2, 6, 3]);
    }

    #[test]
    fn active_adapter_limit_blocks_admission_in_order() {
        let lim = Limits { max_active_adapters: 2, max_batch_tokens: 1000, ..LIM };
        let running = [run(1, "a", 10, 1), run(2, "b", 10, 1)];
        // "c" is first in line and cannot become active: nobody behind it overtakes it.
        let waiting = vec![vec![wait(3, "c", 10)], vec![wait(4, "a", 10)]];
        let p = plan_step(&lim, &running, &waiting, 100);
        assert!(p.admit.is_empty(), "{p:?}");
        // With "a" first, "a" is admitted, then "c" blocks.
        let waiting = vec![vec![wait(4, "a", 10)], vec![wait(3, "c", 10)]];
        let p = plan_step(&lim, &running, &waiting, 100);
        assert_eq!(p.admit, vec![4]);
    }

    #[test]
    fn admission_needs_the_whole_prompt_plus_reserve() {
        let running = [run(1, "", 15, 1)];
        // 3 blocks for 40 tokens + 1 reserve = 4 > 3 free.
        let p = plan_step(&LIM, &running, &[vec![wait(2, "", 40)]], 3);
        assert!(p.admit.is_empty());
        let p = plan_step(&LIM, &running, &[vec![wait(2, "", 40)]], 4);
        assert_eq!(p.admit, vec![2]);
        // Alone, no reserve is kept: a prompt that fits the pool always runs.
        let p = plan_step(&LIM, &[], &[vec![wait(2, "", 48)]], 3);
        assert_eq!(p.admit, vec![2]);
        assert_eq!(p.work, vec![(2, 48)]);
    }

    #[test]
    fn preempts_youngest_when_decodes_need_blocks() {
        // Three decodes at a block boundary, each needs a new block; one block free.
        let running = [run(1, "", 32, 1), run(2, "", 32, 1), run(3, "", 32, 1)];
        let p = plan_step(&LIM, &running, &[], 1);
        // Preempting 3 frees its 2 blocks: 3 free >= 2 needed.
        assert_eq!(p.preempt, vec![3]);
        assert_eq!(p.work, vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn running_and_batch_limits_hold() {
        let lim = Limits { max_running: 2, max_batch_tokens: 1000, ..LIM };
        let waiting = vec![vec![wait(1, "", 5), wait(2, "", 5), wait(3, "", 5)]];
        let p = plan_step(&lim, &[], &waiting, 100);
        assert_eq!(p.admit, vec![1, 2]);
        // A prompt longer than the budget is admitted with a first chunk.
        let p = plan_step(&LIM, &[], &[vec![wait(1, "", 100)]], 100);
        assert_eq!(p.work, vec![(1, 64)]);
    }

    #[test]
    fn cached_prefixes_cost_only_their_tails() {
        // Four 50-token prompts whose first 48 tokens (3 blocks) are cached: 2 tokens of budget
        // each, where uncached only the first would get in (64 tokens a step).
        let cached = |id| WaitingView { cached_tokens: 48, ..wait(id, "a", 50) };
        let p = plan_step(&LIM, &[], &[vec![cached(1), cached(2), cached(3), cached(4)]], 100);
        assert_eq!(p.work, vec![(1, 2), (2, 2), (3, 2), (4, 2)]);
        let p = plan_step(&LIM, &[], &[vec![wait(1, "a", 50), wait(2, "a", 50)]], 100);
        assert_eq!(p.work, vec![(1, 50), (2, 14)]);
        // Blocks: 4 each unshared; with 3 shared (in use by a running sequence) only 1 each.
        let running = [run(9, "a", 60, 1)];
        let shared = |id| WaitingView { shared_blocks: 3, ..cached(id) };
        let p = plan_step(&LIM, &running, &[vec![shared(1), shared(2), shared(3)]], 4);
        assert_eq!(p.admit, vec![1, 2, 3], "1 new block each, the reserve of 1 left: {p:?}");
        let p = plan_step(&LIM, &running, &[vec![cached(1), cached(2)]], 6);
        assert_eq!(p.admit, vec![1], "unshared cached blocks come out of the free count: {p:?}");
    }
}
