"""lightning_topo.callbacks"""
