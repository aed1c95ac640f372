"""Merge the latest result of each benchmark into ``summary.json`` and print the README table.

    python benchmarks/summary.py [--results DIR] [--include-quick]

For each of attn, rms_norm, adamw and train, the newest ``<bench>-*.json`` in DIR (default
benchmarks/results/; by the date stamped inside, --quick runs ignored unless --include-quick)
contributes its ``summary`` keys. Writes DIR/summary.json and prints a markdown table: key,
value, target, met?
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"
BENCHES = ("attn", "rms_norm", "adamw", "train")

# summary key -> (target, what it measures); "ours" = our best backend at that shape
SUMMARY_TARGETS: dict[str, tuple[float, str]] = {
    "attn_fwd_bwd_vs_sdpa": (1.2, "attention fwd+bwd speed / SDPA default; causal bf16 B=4 H=16 T=4096 D=128"),
    "attn_fwd_fraction_of_matmul_peak": (0.5, "attention fwd TFLOP/s / measured bf16 matmul TFLOP/s, same shape"),
    "rms_norm_fraction_of_bandwidth": (0.85, "RMSNorm fwd+bwd GB/s / measured copy GB/s; bf16 16384 x 4096"),
    "rms_norm_vs_torch_compile": (1.2, "RMSNorm fwd+bwd speed / torch.compile(torch.nn.RMSNorm), same shape"),
    "adamw_fraction_of_bandwidth": (0.85, "AdamW step GB/s (28 B/param) / measured copy GB/s; GPT-2 124M fp32"),
    "adamw_vs_torch_fused": (1.0, "AdamW step speed / torch.optim.AdamW(fused=True); GPT-2 124M fp32"),
    "train_mfu": (0.45, "GPT-2 124M bf16 T=1024 training MFU: (6N + 12LTd) x tokens/s / peak bf16 FLOP/s"),
    "train_vs_torch_compile": (1.1, "tokens/s / torch + SDPA + torch.compile + torch fused AdamW, same model"),
}


def latest(results: Path, bench: str, include_quick: bool) -> tuple[Path, dict[str, Any]] | None:
    """The newest result file of one benchmark (None when there is none)."""
    found = []
    for path in results.glob(f"{bench}-*.json"):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("bench") == bench and (include_quick or not doc.get("quick")):
            found.append((doc.get("date", ""), path.name, path, doc))
    if not found:
        return None
    _, _, path, doc = max(found, key=lambda f: (f[0], f[1]))
    return path, doc


def merge(results: Path, include_quick: bool = False) -> dict[str, Any]:
    keys: dict[str, Any] = {k: {"value": None, "target": t, "met": None, "what": what, "source": None}
                            for k, (t, what) in SUMMARY_TARGETS.items()}
    sources = {}
    for bench in BENCHES:
        hit = latest(results, bench, include_quick)
        if hit is None:
            continue
        path, doc = hit
        sources[bench] = {"file": path.name, "device": doc.get("device"), "commit": doc.get("commit"),
                          "date": doc.get("date"), "quick": doc.get("quick", False), "gpu": doc.get("gpu", False)}
        for key, value in (doc.get("summary") or {}).items():
            if key in keys:
                target = keys[key]["target"]
                judged = value is not None and doc.get("gpu", False)  # the targets are GPU numbers
                keys[key].update(value=value, met=value >= target if judged else None, source=path.name)
    return {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "results": str(results), "sources": sources, "keys": keys}


def markdown(merged: dict[str, Any]) -> str:
    devices = sorted({s["device"] for s in merged["sources"].values() if s.get("device")})
    commits = sorted({(s.get("commit") or "unknown")[:10] for s in merged["sources"].values()})
    lines = [f"Measured on {', '.join(devices) or 'no device'} (commit {', '.join(commits) or 'unknown'}).", "",
             "| key | value | target | met? |", "|---|---|---|---|"]
    for key, entry in merged["keys"].items():
        value = "not measured" if entry["value"] is None else f"{entry['value']:.3g}"
        met = "-" if entry["met"] is None else "yes" if entry["met"] else "no"
        lines.append(f"| `{key}` | {value} | >= {entry['target']} | {met} |")
    if any(not s.get("gpu") for s in merged["sources"].values()):
        lines += ["", "The targets apply to GPUs: values from CPU runs are not judged (met? -)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_OUT, help=f"result folder (default {DEFAULT_OUT})")
    parser.add_argument("--include-quick", action="store_true", help="also consider --quick runs")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: result folder {args.results} does not exist", file=sys.stderr)
        return 2
    merged = merge(args.results, args.include_quick)
    out = args.results / "summary.json"
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(markdown(merged))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
