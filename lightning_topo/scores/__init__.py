"""lightning_topo.scores"""
