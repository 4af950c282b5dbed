"""canon.layers"""
