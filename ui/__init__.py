"""shopgraph.ui"""
