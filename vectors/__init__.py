"""Embedding memory (bge-m3 / MiniLM + FAISS): the only package that imports faiss.

The neighbour lookup and false-positive feedback land here (issue 8); empty in the skeleton.
"""
