"""shopgraph.retrieval"""
