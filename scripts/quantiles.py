#!/usr/bin/env python3
"""Prints p50/p99/p99.9 of a Prometheus histogram read from stdin, as the
upper bound of the bucket each quantile falls in (an upper estimate).
    curl -s http://ADDR/metrics | scripts/quantiles.py tollgate_store_round_trip_seconds"""
import re
import sys

name = sys.argv[1]
buckets = []
for line in sys.stdin:
    m = re.match(rf'{name}_bucket{{le="([^"]+)"[^}}]*}} (\S+)', line)
    if m:
        buckets.append((float(m.group(1)), float(m.group(2))))
buckets.sort()
total = buckets[-1][1] if buckets else 0
if not total:
    print("no samples")
    sys.exit(0)
out = []
for q in (0.5, 0.99, 0.999):
    le = next(le for le, c in buckets if c >= q * total)
    out.append(f"p{q * 100:g} ≤ {le * 1e3:g} ms")
print(", ".join(out) + f" ({int(total)} calls)")
