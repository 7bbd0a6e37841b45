"""lightning_topo.topology"""
