"""lightning_topo.pruning"""
