#!/usr/bin/env python3
"""The house's import table, read from the code: which module of `src/` (and `trainer/src/`)
imports which, the floors they stand on, and the two rules docs/ARCHITECTURE.md states:

1. floors: a module imports only modules on lower floors (FLOORS below); in particular nothing
   under `types`, `error`, `kv`, `quant`, `backend` imports a module above it;
2. no import circle between files.

An import is a `use` of a crate path (`crate::`, `super::`, `self::`, `lorafleet::` in the
trainer) or such a path written inline in code (`crate::kv::BlockPool::new(..)`); comments and
`#[cfg(test)]` modules are not read (a test may reach anywhere). A `pub use` is the module's
face (it hands a name on) and counts for the floor rule, not for circles, as a reader of the
code would see it (farm-studio counts them the same way).

    scripts/house.py                  print the table and check the rules
    scripts/house.py --write FILE     also write the table between the markers in FILE
    scripts/house.py --check FILE     also fail if FILE's table differs from the code's

Exit status 1 when a rule is broken or (--check) the table is stale.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- import-table:begin -->", "<!-- import-table:end -->"

# Floor of each top-level module: the ground first. A module may import modules on lower floors
# only; several on one floor import nothing of each other.
FLOORS = [
    ["kv", "rng", "heap", "progress", "cli_flags"],
    ["error"],
    ["types", "weights", "tokenizer"],
    ["quant"],
    ["backend"],
    ["lora", "cli_env", "constrain"],
    ["model"],
    ["train", "data", "runtime"],
    ["engine"],
    ["eval", "loadtest", "server"],
    ["bin", "trainer"],
]
FLOOR = {m: i for i, ms in enumerate(FLOORS) for m in ms}
# Same floor, and the one imports the other: allowed where listed (a floor of peers).
SAME_FLOOR_OK = set()


def rust_files():
    out = []
    for base in ("src", "trainer/src"):
        for d, _, fs in os.walk(os.path.join(ROOT, base)):
            out += [os.path.relpath(os.path.join(d, f), ROOT) for f in fs if f.endswith(".rs")]
    return sorted(out)


def module_of(path):
    """`src/a/b.rs` -> ("lorafleet", ["a", "b"]); `src/a/mod.rs` -> ["a"]; bins are their own."""
    crate = "trainer" if path.startswith("trainer/") else "lorafleet"
    rel = path.split("src/", 1)[1][:-3]
    parts = rel.split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    if parts and parts[0] == "bin":
        return crate, ["bin"] + [p for p in parts[1:] if p != "main"]
    if crate == "trainer" and parts == ["main"]:
        return crate, ["main"]
    return crate, parts


def strip(text):
    """Code without comments, string contents, and `#[cfg(test)]` modules."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:[^"\\]|\\.)*?"#*|"(?:[^"\\]|\\.)*"', '""', text, flags=re.S)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    i = tree.find("{")
    if i < 0:
        return [tree]
    prefix, depth, parts, cur = tree[:i], 0, [], ""
    for ch in tree[i + 1 : tree.rfind("}")]:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [q for p in parts if p for q in expand(prefix + p)]


def main():
    files = rust_files()
    mods = {}
    for f in files:
        crate, parts = module_of(f)
        mods[(crate, tuple(parts))] = f

    # What lib.rs hands on (`pub use error::{Error, Result}`): a name -> the file defining it.
    lib_face = {}
    lib = strip(open(os.path.join(ROOT, "src/lib.rs"), encoding="utf-8").read())
    for m in re.finditer(r"\bpub\s+use\s+([^;]+);", lib):
        for p in expand(m.group(1)):
            segs = p.split("::")
            if ("lorafleet", tuple(segs[:1])) in mods:
                lib_face[segs[-1]] = mods[("lorafleet", tuple(segs[:1]))]

    def resolve(crate, here, path):
        """The file a path names: its longest prefix that is a module (None: outside the crate)."""
        segs = [s for s in re.split(r"::", path) if s]
        if not segs:
            return None
        if segs[0] == "crate":
            base, segs = [], segs[1:]
        elif segs[0] == "lorafleet" and (crate == "trainer" or here[:1] == ["bin"]):
            crate, base, segs = "lorafleet", [], segs[1:]
        elif segs[0] in ("super", "self"):
            base = list(here)
            # A file that is not a mod.rs is its own module: `super` is its parent.
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        elif (crate, tuple(here + segs[:1])) in mods:
            base = list(here)  # a child module named without `self::`
        else:
            return None
        if not base and segs and segs[0] in lib_face:
            return lib_face[segs[0]]
        best = base
        for k in range(len(segs) + 1):
            cand = tuple(base + segs[:k])
            if (crate, cand) in mods:
                best = list(cand)
        return mods.get((crate, tuple(best)))

    edges, faces = {}, {}
    for f in files:
        crate, here = module_of(f)
        code = strip(open(os.path.join(ROOT, f), encoding="utf-8").read())
        uses = []
        for m in re.finditer(r"(\bpub(?:\([^)]*\))?\s+)?\buse\s+([^;]+);", code):
            for p in expand(m.group(2)):
                p = re.sub(r"\bas\s*\w+$", "", p).rstrip(":*")
                uses.append((p, bool(m.group(1))))
        body = re.sub(r"\buse\s+[^;]+;", "", code)
        prefixes = r"(?:crate|super|self)" + ("|lorafleet" if crate == "trainer" or here[:1] == ["bin"] else "")
        for m in re.finditer(r"\b((?:" + prefixes + r")(?:::\w+)+)", body):
            uses.append((m.group(1), False))
        for p, public in uses:
            g = resolve(crate, here, p)
            if g and g != f:
                (faces if public else edges).setdefault(f, set()).add(g)

    def top(f):
        crate, parts = module_of(f)
        if crate == "trainer":
            return "trainer"
        return parts[0] if parts else "lib"

    table = {}
    for src in (edges, faces):
        for f, gs in src.items():
            for g in gs:
                a, b = top(f), top(g)
                if a != b and "lib" not in (a, b):
                    table.setdefault(a, set()).add(b)

    broken = []
    for a, bs in sorted(table.items()):
        for b in sorted(bs):
            if a not in FLOOR or b not in FLOOR:
                broken.append(f"{a} -> {b}: a module with no floor (add it to FLOORS in scripts/house.py)")
            elif FLOOR[b] > FLOOR[a] or (FLOOR[b] == FLOOR[a] and (a, b) not in SAME_FLOOR_OK):
                why = [f"{f} -> {g}" for src in (edges, faces) for f, gs in sorted(src.items()) for g in sorted(gs) if top(f) == a and top(g) == b]
                broken.append(f"{a} (floor {FLOOR[a]}) -> {b} (floor {FLOOR[b]}): {'; '.join(why[:4])}")

    # File circles: strongly connected components of the `use` graph (Tarjan).
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(set(edges) | {g for gs in edges.values() for g in gs}):
        if v not in index:
            visit(v)
    for comp in sccs:
        ties = [f"{f} -> {g}" for f in comp for g in sorted(edges.get(f, ())) if g in comp]
        broken.append("import circle: " + "; ".join(ties))

    lines = ["| floor | module | imports (modules below it) |", "|---|---|---|"]
    for i in reversed(range(len(FLOORS))):
        for m in FLOORS[i]:
            deps = sorted(table.get(m, ()), key=lambda b: (-FLOOR.get(b, 99), b))
            lines.append(f"| {i} | `{m}` | {', '.join(f'`{b}`' for b in deps) or '(nothing of the crate)'} |")
    nfiles = len(files)
    nedges = sum(len(v) for v in edges.values())
    lines.append("")
    lines.append(f"Generated by `scripts/house.py` from {nfiles} files and {nedges} file-to-file imports: "
                 f"{len(sccs)} import circles between files, {len([b for b in broken if not b.startswith('import circle')])} imports that run up a floor.")
    text = "\n".join(lines)
    print(text)

    status = 0
    for b in broken:
        print("house: " + b, file=sys.stderr)
        status = 1
    if len(sys.argv) == 3 and sys.argv[1] in ("--write", "--check"):
        doc = os.path.join(ROOT, sys.argv[2])
        old = open(doc, encoding="utf-8").read()
        if BEGIN not in old or END not in old:
            print(f"house: {sys.argv[2]} has no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        new = old[: old.index(BEGIN) + len(BEGIN)] + "\n" + text + "\n" + old[old.index(END):]
        if sys.argv[1] == "--write":
            open(doc, "w", encoding="utf-8").write(new)
        elif new != old:
            print(f"house: the import table in {sys.argv[2]} is stale: run scripts/house.py --write {sys.argv[2]}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
