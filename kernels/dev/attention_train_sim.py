# The block loops of kernels/attention_train.cu (tile bounds, causal masks, key_row, the online
# softmax, atomics as +=) transliterated into numpy and checked against a dense reference, on
# packed and shared-prefix batches, GQA, tiles of 32 and 16. It validates the decomposition on
# any machine, not the CUDA code itself (tests/cuda/cuda_attention_train.rs does that on a GPU).
# Run: python3 kernels/dev/attention_train_sim.py  (numpy; about a minute)
import numpy as np
rng = np.random.default_rng(0)

def key_row(s, kk):
    start, ln, cs, cl = s
    return cs + kk if kk < cl else start + (kk - cl)

def reference(q, k, v, dout, spans, H, KV, d):
    T = q.shape[0]; g = H // KV; sc = 1/np.sqrt(d)
    out = np.zeros_like(q); lse = np.zeros((T, H)); dq = np.zeros_like(q); dk = np.zeros_like(k); dv = np.zeros_like(v)
    for s in spans:
        start, ln, cs, cl = s
        rows = list(range(cs, cs+cl)) + list(range(start, start+ln))
        for h in range(H):
            kh = h // g
            Q = q[start:start+ln, h*d:(h+1)*d]; K = k[rows, kh*d:(kh+1)*d]; V = v[rows, kh*d:(kh+1)*d]
            S = Q @ K.T * sc
            mask = np.array([[j <= cl + i for j in range(cl+ln)] for i in range(ln)])
            S = np.where(mask, S, -np.inf)
            m = S.max(1, keepdims=True); P = np.exp(S - m); l = P.sum(1, keepdims=True); P /= l
            O = P @ V
            out[start:start+ln, h*d:(h+1)*d] = O; lse[start:start+ln, h] = (m + np.log(l))[:, 0]
            dO = dout[start:start+ln, h*d:(h+1)*d]
            dV = P.T @ dO; dP = dO @ V.T; D = (dO*O).sum(1, keepdims=True); dS = P*(dP - D)*sc
            dq[start:start+ln, h*d:(h+1)*d] += dS @ K
            np.add.at(dk, (rows, slice(kh*d, (kh+1)*d)), dS.T @ Q)
            np.add.at(dv, (rows, slice(kh*d, (kh+1)*d)), dV)
    return out, lse, dq, dk, dv

def tile_rows(d):
    t = 32
    while t > 1 and t*d > 2048: t //= 2
    return t

def kernel_fwd(q, k, v, spans, H, KV, d):
    T = q.shape[0]; tile = tile_rows(d); sc = 1/np.sqrt(d); g = H // KV
    out = np.zeros_like(q); lse = np.zeros((T, H))
    max_len = max(s[1] for s in spans)
    for z, s in enumerate(spans):
        start, ln, cs, cl = s
        for h in range(H):
            kvh = h // g
            for bx in range((max_len + tile - 1)//tile):
                i0 = bx*tile
                if i0 >= ln: continue
                nq = min(tile, ln - i0)
                sq = np.zeros((tile, d)); sq[:nq] = q[start+i0:start+i0+nq, h*d:(h+1)*d]
                m = np.full(tile, -np.inf); l = np.zeros(tile); acc = np.zeros((tile, d))
                n_keys = cl + i0 + nq
                for j0 in range(0, n_keys, tile):
                    nk = min(tile, n_keys - j0)
                    sk = np.zeros((tile, d)); sv = np.zeros((tile, d))
                    for r in range(nk):
                        sk[r] = k[key_row(s, j0+r), kvh*d:(kvh+1)*d]; sv[r] = v[key_row(s, j0+r), kvh*d:(kvh+1)*d]
                    S = np.full((tile, tile), -np.inf)
                    for i in range(tile):
                        for j in range(tile):
                            if i < nq and j < nk and j0 + j <= cl + i0 + i:
                                S[i, j] = sq[i] @ sk[j] * sc
                    alpha = np.ones(tile); P = np.zeros((tile, tile))
                    for i in range(nq):
                        mn = max(m[i], S[i].max())
                        P[i] = np.exp(S[i] - mn)
                        alpha[i] = np.exp(m[i] - mn)
                        l[i] = l[i]*alpha[i] + P[i].sum(); m[i] = mn
                    for i in range(nq):
                        acc[i] = acc[i]*alpha[i] + P[i, :nk] @ sv[:nk]
                for i in range(nq):
                    out[start+i0+i, h*d:(h+1)*d] = acc[i] / l[i]
                    lse[start+i0+i, h] = m[i] + np.log(l[i])
    return out, lse

def kernel_bwd(q, k, v, out, lse, dout, spans, H, KV, d):
    T = q.shape[0]; tile = tile_rows(d); sc = 1/np.sqrt(d); g = H // KV
    delta = np.zeros((T, H))
    for r in range(T):
        for h in range(H): delta[r, h] = out[r, h*d:(h+1)*d] @ dout[r, h*d:(h+1)*d]
    dq = np.zeros_like(q); dk = np.zeros_like(k); dv = np.zeros_like(v)
    max_keys = max(s[3] + s[1] for s in spans)
    for s in spans:
        start, ln, cs, cl = s
        n_keys = cl + ln
        for h in range(H):
            kvh = h // g
            for bx in range((max_keys + tile - 1)//tile):
                j0 = bx*tile
                if j0 >= n_keys: continue
                nk = min(tile, n_keys - j0)
                sk = np.zeros((tile, d)); sv = np.zeros((tile, d))
                for r in range(nk):
                    sk[r] = k[key_row(s, j0+r), kvh*d:(kvh+1)*d]; sv[r] = v[key_row(s, j0+r), kvh*d:(kvh+1)*d]
                dka = np.zeros((tile, d)); dva = np.zeros((tile, d))
                for i0 in range(max(0, j0 - cl), ln, tile):
                    nq = min(tile, ln - i0)
                    sq = np.zeros((tile, d)); sdo = np.zeros((tile, d)); sl = np.zeros(tile); sd = np.zeros(tile)
                    sq[:nq] = q[start+i0:start+i0+nq, h*d:(h+1)*d]; sdo[:nq] = dout[start+i0:start+i0+nq, h*d:(h+1)*d]
                    sl[:nq] = lse[start+i0:start+i0+nq, h]; sd[:nq] = delta[start+i0:start+i0+nq, h]
                    P = np.zeros((tile, tile)); dS = np.zeros((tile, tile))
                    for i in range(tile):
                        for j in range(tile):
                            if i < nq and j < nk and j0 + j <= cl + i0 + i:
                                P[i, j] = np.exp(sq[i] @ sk[j] * sc - sl[i])
                                dS[i, j] = P[i, j] * (sdo[i] @ sv[j] - sd[i]) * sc
                    for j in range(nk):
                        dva[j] += P[:nq, j] @ sdo[:nq]; dka[j] += dS[:nq, j] @ sq[:nq]
                    for i in range(nq):
                        dq[start+i0+i, h*d:(h+1)*d] += dS[i, :nk] @ sk[:nk]
                for j in range(nk):
                    r = key_row(s, j0+j)
                    dk[r, kvh*d:(kvh+1)*d] += dka[j]; dv[r, kvh*d:(kvh+1)*d] += dva[j]
    return dq, dk, dv

def rel(a, b): return np.linalg.norm(a-b)/np.linalg.norm(b)

cases = [
  ("packed with gap", 56, [(0,13,0,0),(14,40,0,0),(55,1,0,0)]),
  ("ctx 19 + 30,33,5", 87, [(0,19,0,0),(19,30,0,19),(49,33,0,19),(82,5,0,19)]),
  ("ctx 45 + 3,70", 118, [(0,45,0,45-45),(45,3,0,45),(48,70,0,45)]),
]
for (H, KV, d) in [(4, 2, 8), (2, 1, 96), (3, 3, 7)]:
    for name, T, spans in cases:
        q = rng.standard_normal((T, H*d)); k = rng.standard_normal((T, KV*d)); v = rng.standard_normal((T, KV*d)); dout = rng.standard_normal((T, H*d))
        ro, rl, rdq, rdk, rdv = reference(q, k, v, dout, spans, H, KV, d)
        ko, kl = kernel_fwd(q, k, v, spans, H, KV, d)
        kdq, kdk, kdv = kernel_bwd(q, k, v, ro, rl, dout, spans, H, KV, d)
        print(f"{name:18s} H{H}/{KV} d{d} tile{tile_rows(d)}: out {rel(ko,ro):.1e} lse {rel(kl,rl):.1e} dq {rel(kdq,rdq):.1e} dk {rel(kdk,rdk):.1e} dv {rel(kdv,rdv):.1e}")
