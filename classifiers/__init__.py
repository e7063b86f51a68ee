"""Classifiers: detectors that turn a prompt into findings, and the engine that runs them."""
