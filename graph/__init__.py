"""shopgraph.graph"""
