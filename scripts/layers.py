#!/usr/bin/env python3
"""Checks the layer order that src/lib.rs states: every module may use only
the modules declared above it there. Comments and `#[cfg(test)]` modules
are skipped (tests may build fixtures with higher layers). Exits 1 on an
arrow that points up."""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "src"
order = re.findall(r"^pub mod (\w+);", (root / "lib.rs").read_text(), re.M)
rank = {m: i for i, m in enumerate(order)}
bad = []
for m in order:
    path = root / m
    files = sorted(path.rglob("*.rs")) if path.is_dir() else [root / f"{m}.rs"]
    for f in files:
        text = f.read_text().split("#[cfg(test)]")[0]
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        for dep in sorted(set(re.findall(r"crate::(\w+)", code))):
            if dep in rank and dep != m and rank[dep] > rank[m]:
                bad.append(f"{f.relative_to(root.parent)}: {m} uses {dep}, which is above it")
for b in bad:
    print(b)
print("layers: ok" if not bad else f"layers: {len(bad)} upward uses")
sys.exit(1 if bad else 0)
