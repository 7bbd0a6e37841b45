"""lightning_topo.models"""
