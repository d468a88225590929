"""shopgraph.encoders"""
