"""gpu/kernels"""
