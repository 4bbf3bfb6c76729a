"""``nnmark bench NAME``: one subcommand per benchmark module in ``nnmark.bench``; each writes to docs/."""

from __future__ import annotations

import importlib

import click

from nnmark.cli._shared import Group, progress_enabled

BENCHMARKS = {
    "dbi": ("dbi", "DBI vs natural and random samples under fine-tuning and weight noise (Yin et al., Tables 4 and 8)."),
    "integrity": ("integrity", "Validset, DBI, AID and Pairs under backdoor, fine-tuning, pruning and int8 quantization "
                  "(Gao et al.)."),
    "ownership-fingerprint": ("metafinger", "MetaFinger and IPGuard under model and input modifications, and on "
                              "independent models (Yang et al.)."),
    "ownership-watermark": ("coupled", "Function-coupled watermarks vs backdoor and frontier-stitching watermarks "
                            "under fine-tuning, transfer, pruning and overwriting (Wen et al.)."),
    "audit": ("audit", "Queries to a decision, sequential vs whole key, and the false-claim rate of early stopping."),
    "telltale": ("innformant", "iNNformant boundary samples: success, PSNR, steps, cost and identify through "
                 "nnmark serve."),
    "cli": ("cli", "Cold start of nnmark --help, --version, models.load and verify beside a bare import torch."),
    "endpoints": ("endpoints", "Verify locally and over REST JSON, REST binary and gRPC against nnmark serve, MLServer "
                  "and KServe: wall time, bytes and the ratio to local."),
    "sources": ("sources", "Load, forward and gradient cost of the same weights as eager torch, TorchScript, "
                "torch.export and ONNX (torch operators and ONNX Runtime)."),
}
"""Benchmark command name -> (module in nnmark.bench, help)."""


@click.group(cls=Group)
def bench() -> None:
    """Run a benchmark and write its tables to docs/benchmarks/.

    \b
    Example:
      nnmark bench dbi --quick --out-dir /tmp/bench
    """


def _bench_command(name: str, module: str, doc: str) -> None:
    @bench.command(name, short_help=doc, help=f"{doc}\n\n\b\nExample:\n  nnmark bench {name} --quick --out-dir /tmp/bench")
    @click.option("--quick", is_flag=True, help="Minutes, not the full run: fewer seeds, samples and iterations.")
    @click.option("--seeds", type=click.IntRange(1), help="Number of seeds (default: the full run's, quick 1).")
    @click.option("--out-dir", type=click.Path(file_okay=False), default="docs/benchmarks", show_default=True)
    def command(quick, seeds, out_dir) -> None:
        bench_module = importlib.import_module(f"nnmark.bench.{module}")
        path = bench_module.run(quick=quick, seeds=seeds, out_dir=out_dir, progress=progress_enabled())
        click.echo(f"wrote {path}")


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)
