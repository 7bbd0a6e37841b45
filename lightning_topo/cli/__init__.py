"""The ``lightning-topo`` command.

``fit``, ``validate``, ``test`` and ``predict`` are Lightning's own subcommands (LightningCLI over
:class:`~lightning_topo.models.SequenceClassifier` and
:class:`~lightning_topo.models.TextClassificationDataModule`); ``prune`` prunes a trained
checkpoint (:mod:`lightning_topo.cli.prune`); ``analyze`` measures the per-layer scores of one or
two saved models (:mod:`lightning_topo.cli.analyze`); ``report`` writes one HTML page of a run's
logs (:mod:`lightning_topo.cli.report`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
OWN_SUBCOMMANDS = {
    "prune": "lightning_topo.cli.prune",
    "analyze": "lightning_topo.cli.analyze",
    "report": "lightning_topo.cli.report",
}

USAGE = """usage: lightning-topo {fit,validate,test,predict,prune,analyze,report} ...

  fit|validate|test|predict   LightningCLI over SequenceClassifier + TextClassificationDataModule
                              e.g. lightning-topo fit --config configs/quickstart.yaml
  prune                       topology-guided structured pruning of a trained checkpoint
                              e.g. lightning-topo prune --help
  analyze                     per-layer PSF / persistence / geometry scores of one or two saved models
                              e.g. lightning-topo analyze --model outputs/pruned --output outputs/analysis
  report                      one self-contained HTML page of a run's logs and figures
                              e.g. lightning-topo report runs/quickstart/version_0

Run 'lightning-topo SUBCOMMAND --help' for the options of one subcommand.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-topo``; returns the exit status.

    0 on success; 2 for an unknown subcommand or a value refused before anything ran (one line on
    stderr, no traceback); 1 when the compressed checkpoint could not be written after the training
    (one line naming where the pruned model was kept). Lightning's subcommands parse with LightningCLI (``--help`` per
    subcommand); ``prune`` returns its own status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command = args[0]
    if command in LIGHTNING_SUBCOMMANDS:
        from lightning_topo.callbacks.pruning import CompressedSaveError
        from lightning_topo.cli.fit import InputError, run_lightning_cli

        try:
            # the real command (argv None): LightningCLI reads sys.argv itself, as it expects
            run_lightning_cli(None if argv is None else args)
        except InputError as err:
            # refused before anything ran (building the classes or a callback's setup): one line
            from lightning_topo.cli.errors import report_refusal

            return report_refusal(command, err)
        except CompressedSaveError as err:  # after the training: one line naming where the model was kept
            print(f"lightning-topo {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 1
        return 0
    if command in OWN_SUBCOMMANDS:
        import importlib

        module = importlib.import_module(OWN_SUBCOMMANDS[command])
        return int(module.main(args[1:]) or 0)
    choices = ", ".join((*LIGHTNING_SUBCOMMANDS, *OWN_SUBCOMMANDS))
    print(
        f"lightning-topo: error: unknown subcommand {command!r}; choose one of {choices} (lightning-topo --help)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
