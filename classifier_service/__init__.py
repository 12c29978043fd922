"""Classifier replicas: aio-pika consumers that run image classifiers with ONNX Runtime."""
