"""``lightning-topo report RUN_DIR``: one self-contained HTML page of a run's logs.

    lightning-topo report runs/quickstart/version_0            # writes runs/quickstart/version_0/report.html
    lightning-topo report runs/wandb/offline-run-<...>          # any logger folder of a run (W&B offline too)
    lightning-topo report runs/quickstart/version_0 --output page.html --overwrite

The page (:mod:`lightning_topo.report`) starts with a summary screen (headline score per lens
against the monitored metric, correlations with n and a bootstrap interval, the pruning outcome)
and embeds every figure as a data URI: it opens offline, can be mailed or archived as one file. A bad input (missing folder, no log, an existing output
without ``--overwrite``) prints one line (``lightning-topo report: error: ...``), exits with
status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning_topo.cli.errors import USER_ERRORS, report_refusal
from lightning_topo.report import write_report

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-topo report``."""
    p = argparse.ArgumentParser(
        prog="lightning-topo report",
        description="One self-contained HTML page from a run's log folder (docs/report.md).",
    )
    p.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="the run folder or any of its logger folders (CSVLogger metrics.csv, TensorBoard events, "
        "W&B offline-run-*), or a folder above exactly one run",
    )
    p.add_argument("--output", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-topo report``; 0 on success, 2 for bad input (one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        path = write_report(args.run_dir, args.output, overwrite=args.overwrite)
    except USER_ERRORS as err:
        return report_refusal("report", err)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
