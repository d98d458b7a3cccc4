# The kernels of kernels/cross_entropy.cu transliterated into numpy at their index level (the
# SGEMM's 64 x 64 block tiles, 16-deep K slices, 4 x 4 per thread and bounds checks; the chunk
# loop of the launcher; the per-row online-softmax update; the finish), checked against a dense
# reference on odd shapes. It validates the indexing and the recurrence on any machine, not the
# CUDA code itself (tests/cuda/cuda_cross_entropy.rs does that on a GPU).
# Run: python3 kernels/dev/cross_entropy_sim.py  (numpy; seconds)
import numpy as np

TM = TN = 64
TK = 16


def sgemm(a, b, c, rowscale, m, n, k, b_nt, accum):
    """One launch: grid (ceil(n / TN), ceil(m / TM)), 256 threads (tx = t % 16, ty = t // 16)."""
    for by in range((m + TM - 1) // TM):
        for bx in range((n + TN - 1) // TN):
            m0, n0 = by * TM, bx * TN
            acc = np.zeros((TM, TN))
            for k0 in range(0, k, TK):
                As = np.zeros((TK, TM))
                Bs = np.zeros((TK, TN))
                for e in range(TM * TK):
                    r, kk = e // TK, e % TK
                    if m0 + r < m and k0 + kk < k:
                        As[kk, r] = a[(m0 + r) * k + k0 + kk]
                for e in range(TN * TK):
                    if b_nt:
                        col, kk = e // TK, e % TK
                        if n0 + col < n and k0 + kk < k:
                            Bs[kk, col] = b[(n0 + col) * k + k0 + kk]
                    else:
                        kk, col = e // TN, e % TN
                        if k0 + kk < k and n0 + col < n:
                            Bs[kk, col] = b[(k0 + kk) * n + n0 + col]
                acc += As.T @ Bs  # every thread's 4 x 4 block, all threads at once
            for t in range(256):
                tx, ty = t % 16, t // 16
                for i in range(4):
                    row = m0 + ty * 4 + i
                    if row >= m:
                        continue
                    for j in range(4):
                        col = n0 + tx * 4 + j
                        if col >= n:
                            continue
                        prev = c[row * n + col]
                        c[row * n + col] = rowscale[row] * prev + acc[ty * 4 + i, tx * 4 + j] if accum else acc[ty * 4 + i, tx * 4 + j]


def fused(h, w, hidden, targets, weights, chunk):
    rows, vocab = len(targets), len(w) // hidden
    chunk = min(chunk, vocab)
    m = np.full(rows, -np.inf)
    z = np.zeros(rows)
    rescale = np.zeros(rows)
    tlogit = np.zeros(rows)
    s = np.zeros(rows * hidden)
    e = np.zeros(rows * chunk)
    for v0 in range(0, vocab, chunk):
        c = min(chunk, vocab - v0)
        wc = w[v0 * hidden:(v0 + c) * hidden]
        sgemm(h, wc, e, None, rows, c, hidden, True, False)
        for row in range(rows):
            er = e[row * c:(row + 1) * c]  # row stride c, as the logits launch wrote it
            t = targets[row] - v0
            if 0 <= t < c:
                tlogit[row] = er[t]
            mn = max(m[row], er.max())
            ex = np.exp(er - mn)
            e[row * c:(row + 1) * c] = ex
            r = np.exp(m[row] - mn)
            rescale[row] = r
            z[row] = z[row] * r + ex.sum()
            m[row] = mn
        sgemm(e, wc, s, rescale, rows, hidden, c, False, True)
    loss = np.zeros(rows)
    for row in range(rows):
        wr = w[targets[row] * hidden:(targets[row] + 1) * hidden]
        s[row * hidden:(row + 1) * hidden] = weights[row] * (s[row * hidden:(row + 1) * hidden] / z[row] - wr)
        loss[row] = m[row] + np.log(z[row]) - tlogit[row]
    return (weights * loss).sum(), s


def reference(h, w, hidden, targets, weights):
    rows = len(targets)
    H, W = h.reshape(rows, hidden), w.reshape(-1, hidden)
    logits = H @ W.T
    mx = logits.max(1, keepdims=True)
    p = np.exp(logits - mx)
    z = p.sum(1, keepdims=True)
    p /= z
    loss = (mx[:, 0] + np.log(z[:, 0]) - logits[np.arange(rows), targets])
    onehot = np.zeros_like(p)
    onehot[np.arange(rows), targets] = 1
    dh = weights[:, None] * ((p - onehot) @ W)
    return (weights * loss).sum(), dh.reshape(-1)


rng = np.random.default_rng(1)
for rows, hidden, vocab, chunk in [(3, 20, 77, 30), (65, 100, 777, 300), (33, 64, 50, 1), (70, 17, 130, 130), (1, 576, 2000, 700)]:
    h = rng.standard_normal(rows * hidden)
    w = rng.standard_normal(vocab * hidden) * 3 / np.sqrt(hidden)
    targets = rng.integers(0, vocab, rows)
    weights = (0.5 + rng.random(rows)) / rows
    lk, dk = fused(h, w, hidden, targets, weights, chunk)
    lr, dr = reference(h, w, hidden, targets, weights)
    print(f"rows {rows:3d} hidden {hidden:3d} vocab {vocab:4d} chunk {chunk:3d}: loss {abs(lk - lr) / abs(lr):.1e}, dh {np.linalg.norm(dk - dr) / np.linalg.norm(dr):.1e}")
