"""Running imgq locally: a private RabbitMQ node and the service processes around it.

Used by the local launcher (``python -m compose.launch``), the test suite and the
benchmark, so all three start the system the same way.
"""
