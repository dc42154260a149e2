"""Does the channels_last backward of a strided 1x1 conv survive on this CPU? (oneDNN issue 6035)

Why: ``Trainer`` keeps models with a strided 1x1 conv of under 16 inputs in NCHW on the CPU
(``training.channels_last_unsafe_convs``). This records, per input-channel count, whether a fresh process running
forward + backward of ``Conv2d(cin, 8, 1, stride=2)`` in channels_last fp32 on one thread exits cleanly, and
whether its weight gradient matches NCHW's. Each case runs in its own process, since the bug can abort it.

    python experiments/repro_channels_last_1x1.py [--channels 1 2 4 7 8 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from peers import cpu_line, machine

RESULTS = Path(__file__).resolve().parent / "results"
CASE = """
import sys, torch
torch.set_num_threads({threads}); torch.manual_seed(0)
conv = torch.nn.Conv2d({cin}, 8, 1, stride=2, bias=False)
x = torch.randn(16, {cin}, 16, 16)
conv(x).square().sum().backward(); ref = conv.weight.grad.clone(); conv.weight.grad = None
conv.to(memory_format=torch.channels_last)
for _ in range(4):
    conv.weight.grad = None
    conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
print("match" if torch.allclose(conv.weight.grad, ref, rtol=1e-4, atol=1e-4) else "MISMATCH")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    for cin in args.channels:
        done = subprocess.run([sys.executable, "-c", CASE.format(cin=cin, threads=args.threads)],
                              capture_output=True, text=True, timeout=300)
        lines = (done.stdout + done.stderr).strip().splitlines()
        rows.append({"in_channels": cin, "exit_code": done.returncode, "output": lines[-1] if lines else ""})
        print(rows[-1], flush=True)
    report = {"command": "python experiments/repro_channels_last_1x1.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine(), "threads": args.threads, "rows": rows}
    m = report["machine"]
    lines = ["# channels_last backward of Conv2d(cin, 8, 1, stride=2), fp32, CPU", "", f"`{report['command']}`", "",
             f"Machine: {cpu_line(m)}, {m['logical_cpus']} logical CPUs, torch {m['torch']}; {args.threads} thread(s); "
             "input 16x16, batch 16; each case in a fresh process; weight gradient compared with NCHW's.", "",
             "| input channels | exit code | last line of output |", "|---:|---:|---|"]
    lines += [f"| {r['in_channels']} | {r['exit_code']} | {r['output']} |" for r in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "repro_channels_last_1x1.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "repro_channels_last_1x1.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
