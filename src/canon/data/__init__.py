"""canon.data"""
