#!/usr/bin/env python3
"""Import cycles in src/: which files and which top-level modules use each other in a circle.

usage: scripts/check-import-cycles.py [SRC_DIR]     (default: src)

Reads every `.rs` file under SRC_DIR (the library; main.rs is the binary and is skipped) and
collects the paths it names that start with `crate::`, `super::` or `self::`, or (in a file that
declares child modules) with a child's name, in `use` trees (braces expanded) and inline
(`crate::train::checkpoint::list(..)`, `mpi_world::MpiWorld`). Each path is resolved to
the file of the longest module prefix it names; a name a `mod.rs` re-exports (`pub use
config::Config`) resolves to the file it comes from. `pub use` lines themselves are a module's
facade, not a dependency, and a file's `#[cfg(test)] mod tests` at its end is left out.

Prints the cycles of two graphs: files (an edge a -> b when a names something of b), and
top-level modules (crate::eval -> crate::train when a file under eval names something under
train). Exits 1 if either graph has a cycle, 0 if neither has.
"""

import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "src")


def module_of(path: Path) -> tuple:
    """src/model/config.rs -> ("model", "config"); src/model/mod.rs -> ("model",); lib.rs -> ()."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def strip(text: str) -> str:
    """Source without comments, string literals and a trailing `#[cfg(test)] mod tests`."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use_tree(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"] (`self` inside braces = the prefix)."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"\bas\w+$", "", tree)]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rindex("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    out = []
    for item in filter(None, items):
        for p in expand_use_tree(item):
            out.append(prefix.rstrip(":") if p == "self" else prefix + p)
    return out


def absolute(path: str, here: tuple) -> list:
    """A `crate::`/`super::`/`self::` path as module components from the crate root."""
    parts = [p for p in path.split("::") if p]
    base = list(here)
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    while parts and parts[0] in ("super", "self"):
        if parts[0] == "super":
            base = base[:-1]
        parts = parts[1:]
    return base + [re.sub(r"\W.*", "", p) for p in parts]


files = sorted(p for p in SRC.rglob("*.rs") if p.name != "main.rs")
modules = {module_of(p): p for p in files}
sources = {p: strip(p.read_text()) for p in files}

# Re-exports: (module, name) -> absolute path of what `pub use` in that module's file names.
reexports = {}
for p, text in sources.items():
    here = module_of(p)
    for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
        for path in expand_use_tree(tree):
            head = path.split("::")[0]
            if head not in ("crate", "super", "self"):
                path = "self::" + path  # `pub use config::Config` in a mod.rs: a child module
            target = absolute(path, here)
            reexports[(here, target[-1])] = target


def resolve(target: list):
    """The file that defines what `target` names: the longest module prefix, through re-exports."""
    for _ in range(8):  # re-exports of re-exports
        for n in range(len(target), -1, -1):
            mod = tuple(target[:n])
            if mod in modules:
                rest = target[n:]
                if rest and (mod, rest[0]) in reexports and reexports[(mod, rest[0])] != target:
                    target = reexports[(mod, rest[0])] + rest[1:]
                    break
                return modules[mod]
        else:
            return None
    return None


edges = {p: set() for p in files}
for p, text in sources.items():
    here = module_of(p)
    text_no_pub_use = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", "", text)
    paths = []
    for tree in re.findall(r"\buse\s+((?:crate|super|self)::[^;]+);", text_no_pub_use):
        paths += expand_use_tree(tree)
    # inline paths, outside `use` lines
    body = re.sub(r"\buse\s+[^;]+;", "", text_no_pub_use)
    paths += re.findall(r"\b(?:crate|super|self)(?:::[A-Za-z_]\w*)+", body)
    # a mod.rs naming its own child modules without a prefix: `mpi_world::MpiWorld`, `use config::X`
    children = re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M)
    for child in children:
        for tree in re.findall(rf"\buse\s+({child}::[^;]+);", text_no_pub_use):
            paths += ["self::" + t for t in expand_use_tree(tree)]
        paths += ["self::" + m for m in re.findall(rf"(?<![\w:]){child}(?:::[A-Za-z_]\w*)+", body)]
    # `use super::x` then `x::item`: the import already points at x
    for path in paths:
        if path in ("self", "super", "crate") or path.startswith("self::") and len(path.split("::")) == 1:
            continue
        f = resolve(absolute(path, here))
        if f is not None and f != p:
            edges[p].add(f)


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def name(p: Path) -> str:
    return str(p.relative_to(SRC))


file_cycles = cycles(edges)
top = {}
for a, bs in edges.items():
    ma = module_of(a)[:1] or ("lib",)
    top.setdefault(ma, set())
    for b in bs:
        mb = module_of(b)[:1] or ("lib",)
        top.setdefault(mb, set())
        if ma != mb:
            top[ma].add(mb)
module_cycles = cycles(top)

print(f"{len(files)} files, {sum(len(v) for v in edges.values())} file edges, "
      f"{len(top)} top-level modules, {sum(len(v) for v in top.values())} module edges")
for comp in file_cycles:
    inside = [f"{name(a)} -> {name(b)}" for a in comp for b in sorted(edges[a]) if b in comp]
    print("file cycle:", ", ".join(inside))
for comp in module_cycles:
    inside = [f"{a[0]} -> {b[0]}" for a in comp for b in sorted(top[a]) if b in comp]
    why = []
    for a in comp:
        for b in comp:
            if b in top[a]:
                via = [f"{name(x)} -> {name(y)}" for x in edges for y in edges[x]
                       if (module_of(x)[:1] or ("lib",)) == a and (module_of(y)[:1] or ("lib",)) == b]
                why.append(f"  {a[0]} -> {b[0]}: " + ", ".join(sorted(via)))
    print("module cycle:", ", ".join(inside))
    print("\n".join(why))
if not file_cycles and not module_cycles:
    print("no cycles")
sys.exit(1 if file_cycles or module_cycles else 0)
