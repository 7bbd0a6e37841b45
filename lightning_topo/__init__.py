"""lightning-topo: topological data analysis for fine-tuning BERT-family models with Lightning.

Subpackages:
    topology         persistent-homology engine (diagrams, H0 MST, H1 via giotto-ph, vectorisations)
    scores           pure functions on tensors (PSF, ...)
    representations  collecting hidden states from a dataloader
    pruning          topology-guided structured pruning and compressed checkpoints
    callbacks        Lightning callbacks over the above
    models           the reference LightningModule and DataModule used by the CLI
"""

from lightning_topo.encoding import EncodedBatch, encode_batch

__version__ = "0.1.0"

__all__ = ["EncodedBatch", "encode_batch", "__version__"]
