#!/usr/bin/env python3
"""Checks the layer order that src/lib.rs states: every module may use only
the modules declared above it there. Comments and `#[cfg(test)]` modules
are skipped (tests may build fixtures with higher layers). Exits 1 on an
arrow that points up.

A use is found however it is spelled: `crate::a::b`, grouped
(`use crate::{a, b::{c, d}}`), or relative (`super::super::a` from a file
two modules deep). The binary (src/main.rs and the modules it declares,
such as src/cli.rs) is the top layer: it may use any module of the library
(`tollgate::a`), and each one it names must be a module lib.rs declares."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "src"
order = re.findall(r"^pub mod (\w+);", (root / "lib.rs").read_text(), re.M)
rank = {m: i for i, m in enumerate(order)}


def code_of(f):
    text = f.read_text().split("#[cfg(test)]")[0]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def heads(group):
    """The first segment of each path of a `{…}` group (nested groups kept whole)."""
    out, depth, item = [], 0, ""
    for c in group:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            out.append(item)
            item = ""
        else:
            item += c
    out.append(item)
    return [re.match(r"\s*(\w+)", i).group(1) for i in out if re.match(r"\s*(\w+)", i)]


def group_at(code, start):
    """The text of the `{…}` group opening at `start`."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == "{":
            depth += 1
        elif code[i] == "}":
            depth -= 1
            if depth == 0:
                return code[start + 1 : i]
    return ""


def used(code, prefix, module_path):
    """Top-level modules `code` names through `prefix` (`crate` or the
    library's name), and through `super::` chains from `module_path`."""
    found = set(re.findall(prefix + r"::(\w+)", code))
    for m in re.finditer(prefix + r"::\{", code):
        found.update(heads(group_at(code, m.end() - 1)))
    for m in re.finditer(r"\b((?:super::)+)(\{|\w+)", code):
        up = m.group(1).count("super::")
        base = module_path[: len(module_path) - up]
        if base:
            continue  # still inside a top-level module: not an arrow between layers
        if m.group(2) == "{":
            found.update(heads(group_at(code, m.end() - 1)))
        else:
            found.add(m.group(2))
    return found


def module_path(f):
    """The module path of file `f` under src/ (`api/admin.rs` → [api, admin])."""
    parts = list(f.relative_to(root).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


bad = []
for m in order:
    path = root / m
    files = sorted(path.rglob("*.rs")) if path.is_dir() else [root / f"{m}.rs"]
    for f in files:
        for dep in sorted(used(code_of(f), r"\bcrate", module_path(f))):
            if dep in rank and dep != m and rank[dep] > rank[m]:
                bad.append(f"{f.relative_to(root.parent)}: {m} uses {dep}, which is above it")

# The binary: main.rs and the modules it declares.
main = root / "main.rs"
if main.exists():
    crate = "tollgate"
    bin_files = [main] + [root / f"{n}.rs" for n in re.findall(r"^mod (\w+);", main.read_text(), re.M)]
    bin_mods = {f.stem for f in bin_files}
    for f in bin_files:
        if not f.exists():
            continue
        for dep in sorted(used(code_of(f), r"\b" + crate, [])):
            if dep not in rank:
                bad.append(f"{f.relative_to(root.parent)}: uses {crate}::{dep}, which lib.rs does not declare")
    for m in order:
        path = root / m
        files = sorted(path.rglob("*.rs")) if path.is_dir() else [root / f"{m}.rs"]
        for f in files:
            if m in bin_mods:
                bad.append(f"{f.relative_to(root.parent)}: {m} is both the binary's and the library's")

for b in bad:
    print(b)
print("layers: ok" if not bad else f"layers: {len(bad)} upward uses")
sys.exit(1 if bad else 0)
