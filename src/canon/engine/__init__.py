"""canon.engine"""
