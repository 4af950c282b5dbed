"""canon.ops"""
