"""Classifier replicas: aio-pika consumers that run PyTorch image classifiers."""
