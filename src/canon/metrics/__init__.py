"""canon.metrics"""
