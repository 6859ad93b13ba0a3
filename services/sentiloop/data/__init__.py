"""Datasets Sentiloop trains and evaluates on, built reproducibly from files on disk.

Nothing here imports torch, transformers or grpc: building a dataset must stay cheap
enough for any service (or a test) to do it in-process.
"""
