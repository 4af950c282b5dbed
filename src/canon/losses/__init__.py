"""canon.losses"""
