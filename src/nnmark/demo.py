"""``make demo``: the README's walk-through, run through the real ``nnmark`` command line.

Trains a LeNet-5 on the bundled MNIST-5k, makes 100 DBI fragile samples and 100 natural samples
into signed key files, verifies the untouched model (INTACT), applies a tiny fine-tune and a
weight-noise attack, verifies again (TAMPERED, with the change rate) and prints a table.
Work files go to ``runs/demo/`` (or the folder given as the first argument).
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

DBI_ITR = 3000
ATTACKS = {
    "fine-tune, SGD lr 1e-4, 100 steps": ["finetune", "--lr", "1e-4", "--steps", "100"],
    "weight noise, std 1e-3": ["noise", "--std", "1e-3"],
}


def nnmark(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one ``nnmark`` command, echoing it as the README shows it."""
    print("$ nnmark " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run([sys.executable, "-m", "nnmark", *args], capture_output=True, text=True)
    if result.returncode == 2 or (check and result.returncode != 0):
        sys.exit(f"demo step failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return result


def verify(key: Path, model: Path, secret: Path) -> dict:
    out = nnmark("verify", str(key), "--model", str(model), "--secret-file", str(secret), "--json", check=False)
    verdict = json.loads(out.stdout)
    print(f"  -> {verdict['decision'].upper()} (change rate {verdict['statistic']:.0%}), exit code {out.returncode}")
    return verdict


def main(workdir: str = "runs/demo") -> None:
    start = time.perf_counter()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    secret = work / "secret"
    if not secret.exists():
        secret.write_text(secrets.token_hex(32) + "\n")
        secret.chmod(0o600)
    model = work / "lenet5.safetensors"
    print(nnmark("train", "--arch", "lenet5", "--data", "mnist5k", "--epochs", "8", "--seed", "0",
                 "--out", str(model)).stdout.strip())
    dbi_key, natural_key = work / "dbi.key", work / "natural.key"
    print(nnmark("mark", "dbi", "--model", str(model), "--n", "100", "--itr", str(DBI_ITR),
                 "--out", str(dbi_key), "--secret-file", str(secret)).stdout.strip())
    print(nnmark("mark", "natural", "--model", str(model), "--n", "100",
                 "--out", str(natural_key), "--secret-file", str(secret)).stdout.strip())

    suspects = {"untouched": model}
    for i, (name, args) in enumerate(ATTACKS.items()):
        out = work / f"attacked-{i}.safetensors"
        print(nnmark("attack", args[0], "--model", str(model), "--out", str(out), *args[1:]).stdout.strip())
        suspects[name] = out

    table = []
    for name, path in suspects.items():
        row = [name]
        for key in (dbi_key, natural_key):
            v = verify(key, path, secret)
            row.append(f"{v['decision'].upper()} {v['statistic']:.0%}")
        table.append(row)

    header = ["model", "DBI key (100 fragile)", "natural key (100 test images)"]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(3)]
    print()
    for r in [header, ["-" * w for w in widths], *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; files in {work}/")


if __name__ == "__main__":
    main(*sys.argv[1:2])
